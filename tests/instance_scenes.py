"""Generated instance-search cases: an object warped by a known homography into a scene."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import skimage_photo


def similarity(scale: float, degrees: float, tx: float, ty: float,
               centre: tuple[float, float]) -> np.ndarray:
    """Scale and turn about ``centre`` of the object, then move it to (tx, ty)."""
    t = math.radians(degrees)
    cx, cy = centre
    to_origin = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=np.float64)
    turn = np.array([[scale * math.cos(t), -scale * math.sin(t), 0],
                     [scale * math.sin(t), scale * math.cos(t), 0], [0, 0, 1]])
    move = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float64)
    return move @ turn @ to_origin


def background(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Clutter: tiles of other skimage photos, so the scene has features of its own."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = np.zeros((h, w, 3), np.uint8)
    tiles = [skimage_photo(n) for n in ("camera", "immunohistochemistry", "hubble_deep_field",
                                         "coins")]
    step = 160
    for y in range(0, h, step):
        for x in range(0, w, step):
            tile = tiles[rng.integers(len(tiles))]
            ty, tx = rng.integers(0, tile.shape[0] - step), rng.integers(0, tile.shape[1] - step)
            out[y:y + step, x:x + step] = tile[ty:ty + step, tx:tx + step][:h - y, :w - x]
    return out


def scene(obj: np.ndarray, matrix: np.ndarray, size: tuple[int, int], mirror: bool = False,
          seed: int = 0) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """(scene pixels, true box) with ``obj`` (mirrored first if asked) warped by ``matrix``."""
    import cv2

    if mirror:
        obj = np.ascontiguousarray(obj[:, ::-1])
    out = background(size, seed)
    warped = cv2.warpPerspective(obj, matrix, size, flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.full(obj.shape[:2], 255, np.uint8), matrix, size)
    out[mask > 127] = warped[mask > 127]
    ys, xs = np.nonzero(mask > 127)
    return out, (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def save(pixels: np.ndarray, path: Path, quality: int = 92) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=quality)
    return path


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    from imagesearch.core.metrics import iou as box_iou

    return box_iou(a, b)


def coffee_scenes(root: Path, count: int) -> None:
    """``count`` photos of the same cup, turned 15 degrees more in each, in clutter."""
    for i in range(count):
        pixels, _ = scene(skimage_photo("coffee"), similarity(0.4, 15 * i, 300, 200,
                                                             (300, 200)), (640, 480), seed=i)
        save(pixels, root / f"c{i}.jpg")
