"""Where an AMES match sits in the photo: matched descriptors, verified geometrically.

Correspondences are mutual nearest neighbours between the query's and the photo's
descriptors (Hamming distance for binary codes, cosine otherwise), kept when close. A
similarity transform (rotation, scale, shift) is fitted to them with RANSAC; with enough
inliers, the box is the extent of the inlier patches in the photo, each patch counted
whole. Positions are patch centres, so tolerances are in patches.
"""

from __future__ import annotations

import numpy as np

from imagesearch.core.rerank import BoxPixels

MAX_HAMMING = 40  # of 128 bits: closer codes may be the same part of the same object
MIN_COSINE = 0.6  # the same for full-precision descriptors
MIN_INLIERS = 4
TOLERANCE_PATCHES = 1.5  # reprojection tolerance, in the photo's patches


def correspondences(query: np.ndarray, photo: np.ndarray, binary: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (query i, photo j) that are each other's nearest neighbour."""
    if len(query) == 0 or len(photo) == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    if binary:
        from imagesearch.core.ames.binarize import hamming

        distance = hamming(query, photo).astype(np.float32)
        limit = float(MAX_HAMMING)
    else:
        q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
        p = photo / np.maximum(np.linalg.norm(photo, axis=1, keepdims=True), 1e-12)
        distance = 1.0 - q @ p.T
        limit = 1.0 - MIN_COSINE
    best_photo = distance.argmin(axis=1)
    best_query = distance.argmin(axis=0)
    qi = np.arange(len(query))
    mutual = best_query[best_photo] == qi
    close = distance[qi, best_photo] <= limit
    keep = mutual & close
    return qi[keep], best_photo[keep]


def verified_box(query_xy: np.ndarray, photo_xy: np.ndarray, qi: np.ndarray,
                 pj: np.ndarray, patch: tuple[float, float]) -> tuple[BoxPixels | None, int]:
    """(box in the photo's pixels, inliers); no box below MIN_INLIERS.

    Args:
        patch: one patch's (width, height) in the photo's pixels.
    """
    if len(qi) < MIN_INLIERS:
        return None, 0
    import cv2

    src = query_xy[qi].astype(np.float32)
    dst = photo_xy[pj].astype(np.float32)
    tolerance = TOLERANCE_PATCHES * max(patch)
    transform, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=tolerance, maxIters=500,
        confidence=0.99, refineIters=10)
    if transform is None or mask is None:
        return None, 0
    inliers = mask.ravel().astype(bool)
    count = int(inliers.sum())
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    # A near-zero or huge scale maps the query onto a point or beyond the photo: not an
    # object seen twice, whatever the count.
    if count < MIN_INLIERS or not 0.05 < scale < 20.0:
        return None, count
    points = dst[inliers]
    half_w, half_h = patch[0] / 2.0, patch[1] / 2.0
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return (float(x0 - half_w), float(y0 - half_h), float(x1 + half_w),
            float(y1 + half_h)), count
