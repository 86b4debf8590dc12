"""Local features: where a photo's distinctive details are, and what they look like.

SIFT keypoints with RootSIFT descriptors (OpenCV; no model weights). A photo keeps its
strongest few, found at a bounded resolution; a query keeps many more, found at a higher
one (asymmetric: the query is computed once, the library is stored for every photo).

Positions, scales and angles are in pixels of the *upright original* photo (EXIF rotation
applied), whatever size the pixels were decoded at, so a box found by verification needs
no further mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

FEATURE_FAMILY = "sift-"  # how every extractor id of these modes begins


@dataclass(frozen=True, slots=True)
class FeatureMode:
    """How many features a library photo keeps, found at what size, stored how compactly."""

    name: str
    max_side: int  # library photos are searched for keypoints at this longest side
    count: int  # the strongest this many are kept
    codec: str  # how each descriptor is stored (core/feature_codec.CODECS)

    @property
    def extractor_id(self) -> str:
        """Names the stored data: a change to any of these makes old records stale."""
        return f"{FEATURE_FAMILY}{self.name}-{self.max_side}-{self.count}-{self.codec}-v1"


# Chosen on the instance benchmark (README, "Finding this very object"; bench/
# feature_trial.py compares the choices): keypoints found at 384 px score as well as at
# 512 px for about half the time; 225 keypoints of 5-byte residual codes beat 160 of
# 8-byte product codes in the same 2 KB; 16-byte codes lose nothing measurable.
FEATURE_MODES: dict[str, FeatureMode] = {
    "compact": FeatureMode("compact", 384, 225, "rq5"),  # 2,045 B a photo
    "detailed": FeatureMode("detailed", 384, 1000, "pq16"),  # ~18 KB a photo
}
# A compact library's details, whatever the mode chosen: 211 keypoints (1,919 B) leave
# room for the photo's 128-byte vector codes within 2 KB (services/stored_vectors.py).
COMPACT_LIBRARY_MODE = FeatureMode("lean", 384, 211, "rq5")
DEFAULT_FEATURE_MODE = "compact"

# A query is extracted once per search, so it can afford many features. Found at 500 px
# they match small objects in library photos better than at 800 px (bench/
# feature_trial.py; 88.9 against 86.8 mAP@100 in its quick trial), and in less time.
# Probably because a small object keeps only coarse keypoints in a library photo, while a
# large query's 1,500 strongest are mostly fine ones.
QUERY_MAX_SIDE = 500
QUERY_COUNT = 1500
POOL = 1000  # keypoints detected before choosing which to keep
_GRID = 4


@dataclass(frozen=True, slots=True)
class LocalFeatures:
    """Keypoints of one image. Arrays share their first dimension N."""

    descriptors: np.ndarray  # N x 128 float32, L2-normalised RootSIFT
    xy: np.ndarray  # N x 2 float32, pixels of the upright original
    scale: np.ndarray  # N float32, keypoint diameter in pixels of the upright original
    angle: np.ndarray  # N float32, degrees, OpenCV's convention
    width: int  # the upright original's size
    height: int

    def __len__(self) -> int:
        return len(self.descriptors)

    def take(self, index: np.ndarray | slice) -> LocalFeatures:
        return LocalFeatures(self.descriptors[index], self.xy[index], self.scale[index],
                             self.angle[index], self.width, self.height)


def empty_features(width: int, height: int) -> LocalFeatures:
    return LocalFeatures(np.zeros((0, 128), np.float32), np.zeros((0, 2), np.float32),
                         np.zeros(0, np.float32), np.zeros(0, np.float32), width, height)


def root_sift(raw: np.ndarray) -> np.ndarray:
    """SIFT to RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, square root.

    Comparing RootSIFT vectors by dot product is comparing SIFT by the Hellinger kernel,
    which is markedly better for matching and needs nothing but this.
    """
    x = raw.astype(np.float32)
    x /= np.maximum(x.sum(axis=1, keepdims=True), 1e-7)
    return np.sqrt(x, out=x)


def _gray(image: Image.Image, max_side: int) -> np.ndarray:
    """8-bit grey pixels, no larger than ``max_side``."""
    gray = image.convert("L")
    w, h = gray.size
    factor = max_side / max(w, h)
    if factor < 1.0:
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        gray = gray.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(gray, dtype=np.uint8)


def extract(image: Image.Image, max_side: int, count: int,
            original_size: tuple[int, int] | None = None) -> LocalFeatures:
    """The ``count`` strongest SIFT keypoints of ``image`` searched at ``max_side``.

    Args:
        image: upright pixels; they may be a reduced decode of the original.
        original_size: the upright original's (width, height) when ``image`` is reduced,
            so positions come back in the original's pixels.
    """
    import cv2

    width, height = original_size or image.size
    pixels = _gray(image, max_side)
    # Back to the original: the decode may itself have been reduced.
    to_original = width / (pixels.shape[1] or 1)
    if min(pixels.shape) < 16:
        return empty_features(width, height)
    # Detect and describe a generous pool in one pass, then choose. (Describing only the
    # chosen with a second call is slower: compute() builds the scale pyramid again. The
    # descriptors are the same; bench/sift_extract.py measures both.)
    sift = cv2.SIFT.create(nfeatures=max(count, POOL))
    found, described = sift.detectAndCompute(pixels, None)
    if not found or described is None:
        return empty_features(width, height)
    chosen = select(found, count, pixels.shape[1], pixels.shape[0])
    keypoints = [found[i] for i in chosen]
    raw = described[chosen]
    xy = np.array([k.pt for k in keypoints], dtype=np.float32) * to_original
    scale = np.fromiter((k.size for k in keypoints), np.float32, len(keypoints)) * to_original
    angle = np.fromiter((k.angle for k in keypoints), np.float32, len(keypoints))
    return LocalFeatures(root_sift(raw), xy, scale, angle, width, height)


def select(keypoints: Sequence[Any], count: int, width: int, height: int) -> np.ndarray:
    """Which keypoints to keep: strong, fine, and spread over the frame.

    Keeping the strongest alone lets big textured areas (grass, gravel, fur) take the
    whole budget, and a small object gets none. So keypoints are ranked by response,
    favouring small ones (priority = rank weight x size^-1/2), then taken round-robin from
    a 4x4 grid of the frame. bench/feature_trial.py compares it with keeping the
    strongest alone: 88.9 against 82.1 mAP@100 in its quick trial.
    """
    n = len(keypoints)
    if n <= count:
        return np.arange(n)
    response = np.fromiter((k.response for k in keypoints), np.float32, n)
    size = np.fromiter((k.size for k in keypoints), np.float32, n)
    rank = np.empty(n, np.float32)
    rank[np.argsort(-response, kind="stable")] = np.linspace(1.0, 0.5, n, dtype=np.float32)
    order = np.argsort(-(rank / np.sqrt(np.maximum(size, 1e-3))), kind="stable")
    pts = np.array([keypoints[i].pt for i in order], dtype=np.float32)
    cx = np.minimum((pts[:, 0] / max(width, 1) * _GRID).astype(np.intp), _GRID - 1)
    cy = np.minimum((pts[:, 1] / max(height, 1) * _GRID).astype(np.intp), _GRID - 1)
    cell = cy * _GRID + cx
    # Position of each keypoint within its cell's queue: round r takes everyone's r-th.
    turn = np.zeros(n, np.intp)
    seen = np.zeros(_GRID * _GRID, np.intp)
    for i, c in enumerate(cell):
        turn[i] = seen[c]
        seen[c] += 1
    picked = order[np.lexsort((np.arange(n), turn))[:count]]
    return np.sort(picked)


# SIFT's 4x4 spatial cells by 8 orientation bins, seen in a mirror: the cell rows swap
# and every orientation bin o becomes -o. (Worked out against SIFT run on mirrored images;
# tests/test_spatial_verification.py matches mirrored scenes with it.)
_MIRROR_ORDER = (np.arange(128).reshape(4, 4, 8)[::-1][..., (-np.arange(8)) % 8]).reshape(-1)


def mirrored(features: LocalFeatures) -> LocalFeatures:
    """The features the left-right mirror image would have, without extracting again."""
    xy = features.xy.copy()
    xy[:, 0] = features.width - xy[:, 0]
    angle = np.mod(180.0 - features.angle, 360.0).astype(np.float32)
    return LocalFeatures(np.ascontiguousarray(features.descriptors[:, _MIRROR_ORDER]), xy,
                         features.scale, angle, features.width, features.height)
