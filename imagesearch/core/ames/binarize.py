"""128-bit codes: L2-normalise, project with the checkpoint's D x 128 matrix, keep the sign.

The projection is the binary AMES checkpoint's own (its first input layer, learned with
the matcher), so the codes are exactly what that matcher was trained on; stored packed,
16 bytes a descriptor.
"""

from __future__ import annotations

import numpy as np

BITS = 128
CODE_BYTES = BITS // 8


def binarize(descriptors: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """N x D descriptors to N x 16 packed codes (bit set: the projection is >= 0).

    A projection of exactly 0 (the reference's sign() gives 0 there) has no binary
    form; it becomes +1, which only a measure-zero set of descriptors can reach.
    """
    x = descriptors.astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    packed: np.ndarray = np.packbits(x @ projection.astype(np.float32) >= 0.0, axis=1)
    return packed


def signs(codes: np.ndarray) -> np.ndarray:
    """N x 16 packed codes to N x 128 float32 of +1 / -1 (the matcher's input)."""
    bits = np.unpackbits(codes, axis=1, count=BITS).astype(np.float32)
    return bits * 2.0 - 1.0


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between packed codes (len(a) x len(b), int32)."""
    sa, sb = signs(a), signs(b)
    distance: np.ndarray = ((BITS - sa @ sb.T) / 2.0).round().astype(np.int32)
    return distance
