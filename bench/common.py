"""Shared set-up for benchmarks: a real architecture with real or random weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

from imagesearch.config import DEFAULT_MODEL, default_models_dir
from imagesearch.core.encoder import Encoder
from imagesearch.core.encoder_loading import load_encoder as load_for_machine
from imagesearch.core.model_registry import parse_model_id
from imagesearch.core.weights import WeightStore

# Random-weight checkpoints are kept here between runs, so the runtime probe (and its
# ONNX export) runs once per model, as it does for a user's real weights.
RANDOM_MODELS = Path(os.environ.get("IMAGESEARCH_BENCH_MODELS",
                                    Path.home() / ".cache" / "imagesearch-bench" / "models"))


def random_store(model_id: str) -> WeightStore:
    """A models folder holding ``model_id``'s architecture with random weights, written
    once and installed through the real install path (speed does not depend on the
    weights' values)."""
    store = WeightStore(RANDOM_MODELS)
    if store.installed(model_id) is not None:
        return store
    import open_clip
    import torch
    from safetensors.torch import save_file

    arch, _tag = parse_model_id(model_id)
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    RANDOM_MODELS.mkdir(parents=True, exist_ok=True)
    ckpt = RANDOM_MODELS / f"{arch}.random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    store.install_file(model_id, ckpt)
    ckpt.unlink()
    return store


def weights_store(model_id: str) -> tuple[WeightStore, str]:
    """The real weights' store if they are installed, else random ones: (store, kind)."""
    store = WeightStore(default_models_dir())
    if store.installed(model_id) is not None:
        return store, "real"
    return random_store(model_id), "random"


def load_encoder(model_id: str = DEFAULT_MODEL, precision: str = "auto",
                 device: str = "cpu") -> tuple[Encoder, str]:
    """The encoder as the app would load it. Returns (encoder, 'real' | 'random')."""
    store, kind = weights_store(model_id)
    return load_for_machine(model_id, store, device=device, precision=precision,
                            allow_download=False), kind


def emit(result: dict[str, object]) -> None:
    print(json.dumps(result))
