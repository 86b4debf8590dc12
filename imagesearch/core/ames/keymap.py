"""Official checkpoints to our modules: DINOv2 (facebookresearch) to timm's ViT, and the
AMES matcher and detector (pavelsuma/ames) to ours.

Each function takes the official state dict as published and returns one our module loads
with ``strict=True``, so a renamed or missing tensor fails loudly instead of leaving a
layer at its random initialisation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from imagesearch.errors import ModelLoadError

Tensor = Any  # torch.Tensor; torch is not imported here


@dataclass(frozen=True, slots=True)
class VitShape:
    """What a DINOv2 checkpoint says about its architecture."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    patch_size: int
    registers: int
    grid: int  # the position embedding's side, in patches (37 for the 518 px checkpoints)

    @property
    def img_size(self) -> int:
        return self.grid * self.patch_size


# DINOv2's heads are 64 wide in every published size (S 384/6, B 768/12, L 1024/16,
# g 1536/24); the tensors alone cannot tell the head count, so it follows from this.
HEAD_DIM = 64


def vit_shape(official: dict[str, Tensor]) -> VitShape:
    """Read the architecture off a DINOv2 checkpoint's tensor shapes.

    Raises:
        ModelLoadError: not a DINOv2 checkpoint with registers.
    """
    try:
        embed_dim = int(official["cls_token"].shape[-1])
        patch = int(official["patch_embed.proj.weight"].shape[-1])
        registers = int(official["register_tokens"].shape[1])
        positions = int(official["pos_embed"].shape[1]) - 1
        mlp_hidden = int(official["blocks.0.mlp.fc1.weight"].shape[0])
    except (KeyError, IndexError, AttributeError) as exc:
        raise ModelLoadError(f"not a DINOv2 checkpoint with registers (missing {exc})") \
            from exc
    blocks = {int(m.group(1)) for k in official if (m := re.match(r"blocks\.(\d+)\.", k))}
    grid = round(positions ** 0.5)
    if not blocks or grid * grid != positions or (embed_dim % HEAD_DIM and embed_dim > HEAD_DIM):
        raise ModelLoadError("the DINOv2 checkpoint's shapes are not those of a ViT")
    return VitShape(embed_dim, max(blocks) + 1, max(1, embed_dim // HEAD_DIM), mlp_hidden,
                    patch, registers, grid)


def dinov2_to_timm(official: dict[str, Tensor]) -> dict[str, Tensor]:
    """DINOv2's keys to timm's ``vit_*_reg4_dinov2`` (built with ``no_embed_class``).

    DINOv2 adds position 0 of its embedding to the class token and none to the registers;
    timm's model adds positions to patches only. Folding position 0 into the class token
    gives the identical token sequence. The mask token is for training only.
    """
    out = dict(official)
    out.pop("mask_token", None)
    pos = out.pop("pos_embed")
    out["cls_token"] = out["cls_token"] + pos[:, :1]
    out["pos_embed"] = pos[:, 1:]
    out["reg_token"] = out.pop("register_tokens")
    return out


def detector_from_official(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The detector's tensors from its checkpoint ({'state': ...}); our module keeps the
    official names (conv1, bn, conv2) as they describe it well."""
    state = checkpoint.get("state", checkpoint)
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise ModelLoadError("not an AMES detector checkpoint (no conv1.weight)")
    return {k: v for k, v in state.items() if k.split(".")[0] in ("conv1", "bn", "conv2")}


_LAYER_NAMES = {
    "self_attn.in_proj_weight": "self_attn.qkv.weight",
    "self_attn.in_proj_bias": "self_attn.qkv.bias",
    "self_attn.out_proj.weight": "self_attn.out.weight",
    "self_attn.out_proj.bias": "self_attn.out.bias",
    "cross_attn.in_proj_weight": "cross_attn.qkv.weight",
    "cross_attn.in_proj_bias": "cross_attn.qkv.bias",
    "cross_attn.out_proj.weight": "cross_attn.out.weight",
    "cross_attn.out_proj.bias": "cross_attn.out.bias",
    "linear1.weight": "ffn_in.weight", "linear1.bias": "ffn_in.bias",
    "linear2.weight": "ffn_out.weight", "linear2.bias": "ffn_out.bias",
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "norm3.weight": "norm3.weight", "norm3.bias": "norm3.bias",
}


def ames_from_official(checkpoint: dict[str, Any]) -> tuple[dict[str, Tensor], bool]:
    """The matcher's tensors under our names, and whether it is the binary ("dist") one.

    The binary model's input stage is (projection W, Linear, LayerNorm); the
    full-precision one's is (Linear, LayerNorm).

    Raises:
        ModelLoadError: the checkpoint is not an AMES matcher.
    """
    state = checkpoint.get("state", checkpoint)
    if not isinstance(state, dict) or "mtc_token" not in state:
        raise ModelLoadError("not an AMES checkpoint (no mtc_token)")
    binarized = "remap_local.0.W" in state
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "mtc_token":
            out["token"] = value
        elif key == "remap_local.0.W":
            out["projection"] = value
        elif key.startswith("remap_local."):
            _, index, leaf = key.split(".", 2)
            linear, norm = ("1", "2") if binarized else ("0", "1")
            if index == linear:
                out[f"embed.{leaf}"] = value
            elif index == norm:
                out[f"embed_norm.{leaf}"] = value
            else:
                raise ModelLoadError(f"unexpected tensor {key} in the AMES checkpoint")
        elif key.startswith("classifier."):
            out["head." + key.split(".", 1)[1]] = value
        elif m := re.match(r"decoder\.layers\.(\d+)\.(.+)$", key):
            leaf = _LAYER_NAMES.get(m.group(2))
            if leaf is None:
                raise ModelLoadError(f"unexpected tensor {key} in the AMES checkpoint")
            out[f"layers.{m.group(1)}.{leaf}"] = value
        else:
            raise ModelLoadError(f"unexpected tensor {key} in the AMES checkpoint")
    return out, binarized
