"""DINOv2 ViT-B/14 with 4 registers: the last block's normalised patch tokens.

The architecture is timm's ``vit_base_patch14_reg4_dinov2`` (shapes read off the
checkpoint, so a smaller test checkpoint builds a smaller model); the weights are the
official ``dinov2_vitb14_reg4_pretrain.pth`` through keymap.dinov2_to_timm. Images go in
at their own aspect ratio, each side snapped to a multiple of the patch size, as the
official AMES extraction does; timm resamples the position embedding per input size
(bicubic, antialiased, as DINOv2's register models do).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imagesearch.core.ames.keymap import VitShape, dinov2_to_timm, vit_shape
from imagesearch.errors import ModelLoadError

PATCH = 14
DEFAULT_MAX_SIDE = 770  # 55 patches on the longer side
MAX_GRID = 255  # patches a side can have: stored positions are one byte each
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def snapped_size(width: int, height: int, max_side: int, patch: int = PATCH
                 ) -> tuple[int, int]:
    """The model's input size: the longer side scaled to ``max_side``, each side then
    rounded to a whole number of patches (at least one)."""
    scale = max_side / max(width, height, 1)
    cols = min(MAX_GRID, max(1, round(width * scale / patch)))
    rows = min(MAX_GRID, max(1, round(height * scale / patch)))
    return cols * patch, rows * patch


def model_input(image: Image.Image, max_side: int, patch: int = PATCH) -> np.ndarray:
    """Upright RGB pixels to the backbone's float32 3xHxW input (ImageNet mean and std).

    Smaller images are scaled up too: the detector and the matcher were trained with the
    longer side at a fixed size, so a patch must cover a similar share of every photo.
    """
    w, h = snapped_size(image.width, image.height, max_side, patch)
    rgb = image.convert("RGB")
    if rgb.size != (w, h):
        # Bilinear with Pillow's reducing gap averages like OpenCV's INTER_AREA when
        # shrinking (what the official extraction uses) and interpolates when enlarging.
        rgb = rgb.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    x = np.asarray(rgb, dtype=np.float32) * np.float32(1.0 / 255.0)
    x -= np.asarray(IMAGENET_MEAN, np.float32)
    x /= np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


@dataclass
class Backbone:
    """The loaded ViT and what it needs to know about its inputs."""

    model: Any  # timm VisionTransformer
    shape: VitShape

    @property
    def dim(self) -> int:
        return self.shape.embed_dim

    def patch_tokens(self, pixels: Any) -> Any:
        """(B, 3, H, W) normalised pixels to (B, H/14 * W/14, D) tokens, row by row."""
        tokens = self.model.forward_features(pixels)
        return tokens[:, self.model.num_prefix_tokens:]


def build_backbone(official: dict[str, Any]) -> Backbone:
    """A timm ViT with the official DINOv2 weights.

    Raises:
        ModelLoadError: the tensors do not fit the architecture they describe.
    """
    import timm

    shape = vit_shape(official)
    model = timm.create_model(
        "vit_base_patch14_reg4_dinov2", pretrained=False, num_classes=0,
        dynamic_img_size=True, img_size=shape.img_size, patch_size=shape.patch_size,
        embed_dim=shape.embed_dim, depth=shape.depth, num_heads=shape.num_heads,
        mlp_ratio=shape.mlp_hidden / shape.embed_dim, reg_tokens=shape.registers)
    try:
        model.load_state_dict(dinov2_to_timm(official), strict=True)
    except (RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"the DINOv2 checkpoint does not fit its architecture: {exc}") \
            from exc
    return Backbone(model.eval(), shape)


def load_state(path: Path) -> dict[str, Any]:
    """A checkpoint's tensors, read without running any code it might carry.

    Raises:
        ModelLoadError: unreadable, or not a plain dictionary of tensors.
    """
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike: the file is unusable
        raise ModelLoadError(f"cannot read {path.name}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name} is not a checkpoint of named tensors")
    return data
