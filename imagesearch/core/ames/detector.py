"""The AMES detector: which patch tokens become local descriptors, and what they are.

Per token: a 1x1 convolution D->D and BatchNorm give the descriptor (then L2-normalised);
ReLU, a 1x1 convolution D->1 and Softplus give its weight. The strongest N by weight are
kept, best first, with the centres of their patches.

The matcher expects the detector-transformed descriptors, not DINOv2's tokens: the
official extraction (extract/extract_dino.py, ``feats, weights = detector(feats)``)
replaces the tokens with the detector's normalised output before storing them, and those
stored descriptors are what the matcher was trained and evaluated on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from imagesearch.core.ames.backbone import PATCH


@dataclass(frozen=True, slots=True)
class AmesFeatures:
    """One image's local descriptors, strongest first. Arrays share their first dimension."""

    descriptors: np.ndarray  # N x D float32, L2-normalised (the detector's output)
    weights: np.ndarray  # N float32, the detector's Softplus weight
    cells: np.ndarray  # N x 2 uint8: (column, row) of each descriptor's patch
    grid: tuple[int, int]  # (columns, rows) of patches the image was cut into
    width: int  # the upright original's size, which positions are expressed in
    height: int

    def __len__(self) -> int:
        return len(self.descriptors)

    @property
    def xy(self) -> np.ndarray:
        """Patch centres in pixels of the upright original (x, y), float32."""
        return cell_centres(self.cells, self.grid, self.width, self.height)

    def head(self, n: int) -> AmesFeatures:
        """The strongest ``n`` (they are stored strongest first)."""
        return AmesFeatures(self.descriptors[:n], self.weights[:n], self.cells[:n],
                            self.grid, self.width, self.height)


def cell_centres(cells: np.ndarray, grid: tuple[int, int], width: int, height: int
                 ) -> np.ndarray:
    """(column, row) patch cells to their centres in the original's pixels.

    The model saw the original scaled to ``grid`` patches of 14 px, so a cell's centre at
    (c + 0.5) * 14 model pixels is (c + 0.5) / columns of the original's width.
    """
    cols, rows = grid
    out = np.empty((len(cells), 2), np.float32)
    out[:, 0] = (cells[:, 0].astype(np.float32) + 0.5) * (width / max(cols, 1))
    out[:, 1] = (cells[:, 1].astype(np.float32) + 0.5) * (height / max(rows, 1))
    return out


def build_detector(state: dict[str, Any], dim: int) -> Any:
    """The detector module with its weights (eval mode)."""
    from torch import nn

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(dim, dim, 1)
            self.bn = nn.BatchNorm2d(dim)
            self.conv2 = nn.Conv2d(dim, 1, 1)

        def forward(self, tokens: Any) -> tuple[Any, Any]:
            """(B, N, D) tokens to (B, N, D) descriptors and (B, N) weights."""
            import torch.nn.functional as F

            # 1x1 convolutions see each token alone: no need to lay them out as a grid.
            x = self.bn(self.conv1(tokens.transpose(1, 2)[..., None]))
            descriptors = F.normalize(x, p=2, dim=1, eps=1e-15)
            weights = F.softplus(self.conv2(F.relu(x)), beta=1, threshold=20)
            return descriptors[..., 0].transpose(1, 2), weights[:, 0, :, 0]

    detector = Detector()
    detector.load_state_dict(state, strict=True)
    return detector.eval()


def select(descriptors: Any, weights: Any, grid: tuple[int, int], n: int,
           size: tuple[int, int]) -> AmesFeatures:
    """The ``n`` heaviest tokens of one image (torch tensors (T, D) and (T,)), best first."""
    import torch

    k = min(n, int(weights.shape[0]))
    top, index = torch.topk(weights.float(), k)
    cols = grid[0]
    flat = index.cpu().numpy()
    # Tokens come row by row: token t is column t % cols of row t // cols.
    cells = np.stack([flat % cols, flat // cols], axis=1).astype(np.uint8)
    return AmesFeatures(descriptors[index].float().cpu().numpy(),
                        top.cpu().numpy().astype(np.float32), cells, grid, size[0], size[1])


def grid_of(height: int, width: int) -> tuple[int, int]:
    """(columns, rows) of patches for a model input of this size."""
    return width // PATCH, height // PATCH
