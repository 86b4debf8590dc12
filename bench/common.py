"""Shared set-up for benchmarks: a real architecture with real or random weights."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from imagesearch.config import DEFAULT_MODEL, default_models_dir
from imagesearch.core.encoder import ClipEncoder
from imagesearch.core.model_registry import parse_model_id
from imagesearch.core.weights import WeightStore


def load_encoder(model_id: str = DEFAULT_MODEL, precision: str = "auto",
                 device: str = "cpu") -> tuple[ClipEncoder, str]:
    """The model with its real weights if installed, else the same architecture with random
    weights saved and loaded through the real checkpoint path (speed does not depend on the
    weights' values). Returns (encoder, 'real' | 'random')."""
    store = WeightStore(default_models_dir())
    if store.installed(model_id) is not None:
        return ClipEncoder.load(model_id, store, device=device, precision=precision,
                                allow_download=False), "real"
    import open_clip
    import torch
    from safetensors.torch import save_file

    arch, _tag = parse_model_id(model_id)
    tmp = Path(tempfile.mkdtemp(prefix="imagesearch-bench-"))
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    ckpt = tmp / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    random_store = WeightStore(tmp / "models")
    random_store.install_file(model_id, ckpt)
    return ClipEncoder.load(model_id, random_store, device=device, precision=precision,
                            allow_download=False), "random"


def emit(result: dict[str, object]) -> None:
    print(json.dumps(result))
