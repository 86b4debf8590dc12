"""The AMES networks loaded once: extraction (backbone + detector) and pair scoring.

On CUDA everything runs in float16 and pairs are scored in large batches; on the CPU in
float32, in small batches so a time budget and cancellation are honoured between them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imagesearch.core.ames.backbone import (
    DEFAULT_MAX_SIDE,
    Backbone,
    build_backbone,
    load_state,
    model_input,
)
from imagesearch.core.ames.binarize import binarize, signs
from imagesearch.core.ames.codec import KIND_BITS, KIND_FP16, AmesRecord
from imagesearch.core.ames.detector import AmesFeatures, build_detector, grid_of, select
from imagesearch.core.ames.keymap import ames_from_official, detector_from_official
from imagesearch.core.ames.matcher import build_matcher
from imagesearch.errors import ModelLoadError


@dataclass(frozen=True, slots=True)
class AmesPaths:
    backbone: Path  # dinov2_vitb14_reg4_pretrain.pth
    detector: Path  # dinov2_detector.pt
    matcher: Path  # dinov2_ames_dist.pt or dinov2_ames.pt


@dataclass(frozen=True, slots=True)
class PreparedSet:
    """One image's matcher input: tokens' source (codes' signs or descriptors), ready."""

    values: np.ndarray  # N x 128 (+-1) or N x D float32
    xy: np.ndarray  # N x 2 positions in the upright original's pixels
    codes: np.ndarray | None  # N x 16 packed codes (binary model), for boxes
    patch: tuple[float, float]  # one patch's (width, height) in the original's pixels


def pick_device(requested: str) -> str:
    import torch

    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda"
    return "cpu"


class AmesModels:
    """Backbone, detector and matcher on one device; thread-safe for concurrent use."""

    def __init__(self, paths: AmesPaths, device: str = "auto",
                 max_side: int = DEFAULT_MAX_SIDE) -> None:
        import torch

        self.device = pick_device(device)
        self.dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.max_side = max_side
        self.backbone: Backbone = build_backbone(load_state(paths.backbone))
        self.detector = build_detector(detector_from_official(load_state(paths.detector)),
                                       self.backbone.dim)
        state, self.binarized = ames_from_official(load_state(paths.matcher))
        self.matcher = build_matcher(state, self.binarized)
        self.local_dim = int(self.detector.conv1.weight.shape[0])
        if self.binarized and int(state["projection"].shape[0]) != self.local_dim:
            raise ModelLoadError("the AMES checkpoint was trained on descriptors of another "
                                 "size than this detector's")
        self.projection = state["projection"].float().numpy() if self.binarized else None
        for module in (self.backbone.model, self.detector, self.matcher):
            module.to(self.device, self.dtype)
        self._lock = threading.Lock()  # torch modules are shared between threads

    @property
    def kind(self) -> int:
        return KIND_BITS if self.binarized else KIND_FP16

    # Extraction -----------------------------------------------------------------------------

    def extract(self, images: Sequence[Image.Image], n: int,
                sizes: Sequence[tuple[int, int]] | None = None) -> list[AmesFeatures]:
        """The ``n`` strongest descriptors of each image (upright RGB pixels).

        Args:
            sizes: each original's upright (width, height), when the pixels given are a
                reduced decode; positions come back in the original's pixels.
        """
        import torch

        out: list[AmesFeatures] = []
        for i, image in enumerate(images):
            pixels = model_input(image, self.max_side, self.backbone.shape.patch_size)
            grid = grid_of(pixels.shape[1], pixels.shape[2])
            x = torch.from_numpy(pixels)[None].to(self.device, self.dtype)
            with self._lock, torch.inference_mode():
                descriptors, weights = self.detector(self.backbone.patch_tokens(x))
            size = sizes[i] if sizes is not None else image.size
            out.append(select(descriptors[0], weights[0], grid, n, size))
        return out

    def record(self, features: AmesFeatures) -> AmesRecord:
        """The stored form: binary codes for the binary model, float16 otherwise."""
        data = binarize(features.descriptors, self.projection) \
            if self.projection is not None else features.descriptors.astype(np.float16)
        return AmesRecord(self.kind, data, features.cells, features.grid, features.width,
                          features.height)

    # Scoring ---------------------------------------------------------------------------------

    def query_set(self, features: AmesFeatures) -> PreparedSet:
        patch = _patch(features.grid, features.width, features.height)
        if self.projection is not None:
            codes = binarize(features.descriptors, self.projection)
            return PreparedSet(signs(codes), features.xy, codes, patch)
        return PreparedSet(features.descriptors.astype(np.float32), features.xy, None, patch)

    def photo_set(self, record: AmesRecord, n: int) -> PreparedSet:
        """A stored record as matcher input, its strongest ``n`` descriptors."""
        from imagesearch.core.ames.detector import cell_centres

        data, cells = record.data[:n], record.cells[:n]
        xy = cell_centres(cells, record.grid, record.width, record.height)
        patch = _patch(record.grid, record.width, record.height)
        if record.kind == KIND_BITS:
            return PreparedSet(signs(data), xy, data, patch)
        # Stored in float16: the rounding the reference applies to projected tokens at
        # evaluation is, here, simply that of the stored descriptors, before projection.
        return PreparedSet(data.astype(np.float32), xy, None, patch)

    def compatible(self, record: AmesRecord) -> bool:
        if record.kind != self.kind:
            return False
        return record.kind == KIND_BITS or int(record.data.shape[1]) == self.local_dim

    def logits(self, query: PreparedSet, photos: Sequence[PreparedSet]) -> np.ndarray:
        """One logit per photo for the pair (query, photo), all in one batch."""
        import torch

        if not photos:
            return np.zeros(0, np.float32)
        b = len(photos)
        longest = max(max(len(p.values) for p in photos), 1)
        width = query.values.shape[1]
        photo_x = np.zeros((b, longest, width), np.float32)
        photo_pad = np.ones((b, longest), bool)
        for i, p in enumerate(photos):
            photo_x[i, :len(p.values)] = p.values
            photo_pad[i, :len(p.values)] = False
        dev, dt = self.device, self.dtype
        with self._lock, torch.inference_mode():
            q = self.matcher.tokens(torch.from_numpy(query.values).to(dev, dt))
            t = self.matcher.tokens(torch.from_numpy(photo_x).to(dev, dt))
            q_pad = torch.zeros((b, len(query.values)), dtype=torch.bool, device=dev)
            logits = self.matcher(q.expand(b, -1, -1), q_pad, t,
                                  torch.from_numpy(photo_pad).to(dev))
        out: np.ndarray = logits.float().cpu().numpy()
        return out


def _patch(grid: tuple[int, int], width: int, height: int) -> tuple[float, float]:
    return width / max(grid[0], 1), height / max(grid[1], 1)
