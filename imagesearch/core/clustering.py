"""k-means with FAISS, flat or in two levels (coarse cells, then k-means inside each).

Two levels cost a small share of flat k-means for thousands of centres: each point is
compared with about sqrt(k) coarse centres and then with its cell's few, not with all k.
The visual vocabulary of the details index (core/local_index.py) and the inverted lists
of the approximate search index (core/index_family.py) are both learned this way.
"""

from __future__ import annotations

import numpy as np

from imagesearch.core.native_libs import faiss_module


def kmeans(data: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k centres of ``data`` by Euclidean k-means (12 iterations, at most 64 points a
    centre sampled)."""
    faiss = faiss_module()
    learner = faiss.Kmeans(data.shape[1], k, niter=12, seed=seed, verbose=False,
                           min_points_per_centroid=1, max_points_per_centroid=64)
    learner.train(np.ascontiguousarray(data, dtype=np.float32))
    return np.asarray(learner.centroids, dtype=np.float32)


def nearest(centroids: np.ndarray, data: np.ndarray, inner_product: bool = False
            ) -> np.ndarray:
    """Each row of ``data``'s nearest centre (Euclidean, or by inner product)."""
    faiss = faiss_module()
    flat = (faiss.IndexFlatIP if inner_product else faiss.IndexFlatL2)(centroids.shape[1])
    flat.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, found = flat.search(np.ascontiguousarray(data, dtype=np.float32), 1)
    return np.asarray(found[:, 0], dtype=np.int64)


def shares(counts: np.ndarray, total: int) -> np.ndarray:
    """``total`` split over cells in proportion to ``counts`` (largest remainders)."""
    exact = total * counts / max(int(counts.sum()), 1)
    share = np.floor(exact).astype(np.int64)
    share[np.argsort(-(exact - share), kind="stable")[:total - int(share.sum())]] += 1
    return share


def coarse_count(k: int) -> int:
    """Coarse cells for k centres: the power of two nearest sqrt(k)."""
    return int(2 ** round(float(np.log2(np.sqrt(k)))))


def spherical_two_level(data: np.ndarray, k: int, seed: int, refine: int = 0
                        ) -> np.ndarray:
    """k unit-length centres of unit vectors ``data`` for inner-product search, in two
    levels: coarse cells, then spherical k-means inside each cell, its number of
    centres in proportion to the points it holds; then ``refine`` iterations of flat
    spherical k-means over all of ``data`` from those centres (when there are at least
    k points). With fewer points than k, some centres repeat.

    For the inverted lists of a million photos' vectors (4,096 lists from 163,840 of
    them; bench/ivf_training.py, with the 8-bit coder's training) on the CPU measured:
    two levels alone took 4.8 s, and the probe count's calibration then chose 128 lists
    a query (recall@10 0.983); with 2 refining iterations 12.1 s and 64 lists (0.979);
    flat spherical k-means (10 iterations) 48.7 s and 32 lists (0.976).
    """
    faiss = faiss_module()
    data = np.ascontiguousarray(data, dtype=np.float32)
    coarse = kmeans(data, min(coarse_count(k), len(data)), seed)
    coarse /= np.maximum(np.linalg.norm(coarse, axis=1, keepdims=True), 1e-12)
    cell = nearest(coarse, data, inner_product=True)
    parts = []
    for c, count in enumerate(shares(np.bincount(cell, minlength=len(coarse)), k)):
        if count == 0:
            continue
        members = data[cell == c]
        if count >= len(members):  # as many centres as points: each its own (padded)
            parts.append(members[np.arange(count) % len(members)])
            continue
        learner = faiss.Kmeans(data.shape[1], int(count), niter=10, spherical=True,
                               seed=seed * len(coarse) + c + 1, verbose=False,
                               min_points_per_centroid=1, max_points_per_centroid=256)
        learner.train(np.ascontiguousarray(members))
        parts.append(np.asarray(learner.centroids, dtype=np.float32))
    centres = np.concatenate(parts)
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    if refine and len(data) >= k:  # (FAISS needs a point a centre)
        learner = faiss.Kmeans(data.shape[1], k, niter=refine, spherical=True, seed=seed,
                               verbose=False, min_points_per_centroid=1,
                               max_points_per_centroid=256)
        learner.train(data, init_centroids=np.ascontiguousarray(centres, dtype=np.float32))
        centres = np.asarray(learner.centroids, dtype=np.float32)
    return np.ascontiguousarray(centres, dtype=np.float32)
