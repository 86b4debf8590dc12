"""A tiny open_clip architecture with random weights, written to disk like a real checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

TINY_ARCH = "ISTiny-ViT"
TINY_MODEL_ID = f"{TINY_ARCH}/random"

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32,
                   "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                 "layers": 2},
}


def write_tiny_checkpoint(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``<arch>.json`` and a safetensors checkpoint; returns (checkpoint, config)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{TINY_ARCH}.json"
    config.write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_ARCH, pretrained=None)
    checkpoint = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    return checkpoint, config
