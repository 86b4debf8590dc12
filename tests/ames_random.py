"""Deterministic random weights in the official checkpoints' formats (DINOv2, the AMES
detector and matcher), from a seed: the parity fixture's state dicts, regenerated rather
than stored, and the tiny checkpoints the pipeline tests install.

NumPy's PCG64 stream is stable across platforms and versions, so a seed names the same
tensors everywhere. Scales keep a random network's activations in a sane range.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _linear(rng: np.random.Generator, out: int, inp: int) -> np.ndarray:
    return rng.standard_normal((out, inp), dtype=np.float32) / np.float32(np.sqrt(inp))


def _norm(rng: np.random.Generator, n: int, prefix: str, out: dict[str, np.ndarray]) -> None:
    out[prefix + ".weight"] = 1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)
    out[prefix + ".bias"] = 0.1 * rng.standard_normal(n, dtype=np.float32)


def dinov2_arrays(seed: int, dim: int = 768, depth: int = 12, registers: int = 4,
                  grid: int = 37, patch: int = 14, mlp: int = 4) -> dict[str, np.ndarray]:
    """DINOv2's state dict (as facebookresearch/dinov2 names it) with random values."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {
        "cls_token": 0.5 * rng.standard_normal((1, 1, dim), dtype=np.float32),
        "pos_embed": 0.5 * rng.standard_normal((1, grid * grid + 1, dim), dtype=np.float32),
        "register_tokens": 0.5 * rng.standard_normal((1, registers, dim), dtype=np.float32),
        "mask_token": rng.standard_normal((1, dim), dtype=np.float32),
        "patch_embed.proj.weight": _linear(rng, dim, 3 * patch * patch)
        .reshape(dim, 3, patch, patch),
        "patch_embed.proj.bias": 0.1 * rng.standard_normal(dim, dtype=np.float32),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        _norm(rng, dim, b + "norm1", out)
        out[b + "attn.qkv.weight"] = _linear(rng, 3 * dim, dim)
        out[b + "attn.qkv.bias"] = 0.1 * rng.standard_normal(3 * dim, dtype=np.float32)
        out[b + "attn.proj.weight"] = _linear(rng, dim, dim)
        out[b + "attn.proj.bias"] = 0.1 * rng.standard_normal(dim, dtype=np.float32)
        out[b + "ls1.gamma"] = 0.3 * rng.random(dim, dtype=np.float32)
        _norm(rng, dim, b + "norm2", out)
        out[b + "mlp.fc1.weight"] = _linear(rng, mlp * dim, dim)
        out[b + "mlp.fc1.bias"] = 0.1 * rng.standard_normal(mlp * dim, dtype=np.float32)
        out[b + "mlp.fc2.weight"] = _linear(rng, dim, mlp * dim)
        out[b + "mlp.fc2.bias"] = 0.1 * rng.standard_normal(dim, dtype=np.float32)
        out[b + "ls2.gamma"] = 0.3 * rng.random(dim, dtype=np.float32)
    _norm(rng, dim, "norm", out)
    return out


def detector_arrays(seed: int, dim: int = 768) -> dict[str, np.ndarray]:
    """The AMES detector's ``state`` (SpatialAttention2d) with random values."""
    rng = np.random.default_rng(seed)
    out = {
        "conv1.weight": _linear(rng, dim, dim).reshape(dim, dim, 1, 1),
        "conv1.bias": 0.1 * rng.standard_normal(dim, dtype=np.float32),
        "bn.weight": 1.0 + 0.1 * rng.standard_normal(dim, dtype=np.float32),
        "bn.bias": 0.1 * rng.standard_normal(dim, dtype=np.float32),
        "bn.running_mean": 0.1 * rng.standard_normal(dim, dtype=np.float32),
        "bn.running_var": 0.5 + rng.random(dim, dtype=np.float32),
        "conv2.weight": _linear(rng, 1, dim).reshape(1, dim, 1, 1),
        "conv2.bias": 0.1 * rng.standard_normal(1, dtype=np.float32),
    }
    return out


def ames_arrays(seed: int, binarized: bool, local_dim: int = 768, dim: int = 128,
                layers: int = 5, ffn: int = 1024) -> dict[str, np.ndarray]:
    """The AMES matcher's ``state`` (pavelsuma/ames names) with random values."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {"mtc_token": rng.standard_normal(dim, dtype=np.float32)}
    if binarized:
        out["remap_local.0.W"] = rng.standard_normal((local_dim, dim), dtype=np.float32)
        out["remap_local.1.weight"] = _linear(rng, dim, dim)
        out["remap_local.1.bias"] = 0.1 * rng.standard_normal(dim, dtype=np.float32)
        _norm(rng, dim, "remap_local.2", out)
    else:
        out["remap_local.0.weight"] = _linear(rng, dim, local_dim)
        out["remap_local.0.bias"] = 0.1 * rng.standard_normal(dim, dtype=np.float32)
        _norm(rng, dim, "remap_local.1", out)
    for i in range(layers):
        b = f"decoder.layers.{i}."
        for attn in ("self_attn", "cross_attn"):
            out[b + attn + ".in_proj_weight"] = _linear(rng, 3 * dim, dim)
            out[b + attn + ".in_proj_bias"] = 0.1 * rng.standard_normal(3 * dim,
                                                                        dtype=np.float32)
            out[b + attn + ".out_proj.weight"] = _linear(rng, dim, dim)
            out[b + attn + ".out_proj.bias"] = 0.1 * rng.standard_normal(dim, dtype=np.float32)
        out[b + "linear1.weight"] = _linear(rng, ffn, dim)
        out[b + "linear1.bias"] = 0.1 * rng.standard_normal(ffn, dtype=np.float32)
        out[b + "linear2.weight"] = _linear(rng, dim, ffn)
        out[b + "linear2.bias"] = 0.1 * rng.standard_normal(dim, dtype=np.float32)
        for n in (1, 2, 3):
            _norm(rng, dim, f"{b}norm{n}", out)
    out["classifier.weight"] = _linear(rng, 1, dim)
    out["classifier.bias"] = 0.1 * rng.standard_normal(1, dtype=np.float32)
    return out


def tensors(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def write_tiny_ames(folder: Path, binarized: bool = True, dim: int = 64
                    ) -> tuple[Path, Path, Path]:
    """A tiny DINOv2 (64 wide, 2 blocks), its detector and an AMES matcher of the real
    size, written as the official files are: (backbone, detector, matcher) paths."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    backbone = folder / "dinov2_vitb14_reg4_pretrain.pth"
    torch.save(tensors(dinov2_arrays(1, dim=dim, depth=2, grid=4)), backbone)
    detector = folder / "dinov2_detector.pt"
    torch.save({"state": tensors(detector_arrays(2, dim=dim))}, detector)
    matcher = folder / ("dinov2_ames_dist.pt" if binarized else "dinov2_ames.pt")
    torch.save({"state": tensors(ames_arrays(3, binarized, local_dim=dim))}, matcher)
    return backbone, detector, matcher
