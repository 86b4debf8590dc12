"""Which FAISS index family suits a library's size, and training the approximate one.

Exact search (Flat) is right while it is quick and fits the memory budget: its answers
are the truth and it needs no training. Past that, an inverted file with 8-bit scalar
codes (IVF-SQ8) answers in a fraction of a millisecond at a quarter of the memory; on the
1M-vector study in bench/ann.py it kept recall@10 0.98 against exact search, where
IVF-PQ kept 0.51 and HNSW needed 4.4x the memory. The number of lists probed is not
guessed: it is calibrated on the library's own vectors until recall reaches a target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from imagesearch.core.clustering import spherical_two_level
from imagesearch.core.native_libs import faiss_module

FLAT = "flat"
IVF_SQ8 = "ivf-sq8"
# A compact library's (core/vector_codec.py): inverted lists holding the catalog's own
# product codes, scored against the vectors they stand for (no residuals).
IVF_PQ = "ivf-pq"
FAMILIES = (FLAT, IVF_SQ8, IVF_PQ)

# Exact search's cost grows with the library: about 17 ms at 100,000 512-d vectors on two
# cores, 166 ms at 1,000,000 (issue figures). Up to here a query stays near 35 ms.
FLAT_MAX = 200_000
# An approximate index is worth its training only for a library this large.
IVF_MIN = 5_000
RECALL_TARGET = 0.97  # recall@10 against exact search, on the library's own vectors
CALIBRATION_QUERIES = 200
RETRAIN_GROWTH = 4.0  # lists sized for N vectors serve until the library is this much larger


@dataclass(frozen=True, slots=True)
class Plan:
    """The family for a library of ``count`` vectors and why."""

    family: str
    reason: str


def choose_family(count: int, dim: int, memory_mb: int, flat_max: int = FLAT_MAX,
                  coded: bool = False) -> Plan:
    """Exact while small enough to be quick and to fit ``memory_mb``; IVF-SQ8 beyond.

    ``coded``: the catalog keeps product codes (a compact library): IVF-PQ over those
    codes once the library is large enough for lists, whatever the memory.
    """
    flat_bytes = count * dim * 4
    if count < max(IVF_MIN, 1):
        return Plan(FLAT, f"{count:,} photos: exact search is instant")
    if coded:
        return Plan(IVF_PQ, f"{count:,} photos in a compact library: inverted lists over "
                            "its product codes")
    if count <= flat_max and flat_bytes <= memory_mb * 2 ** 20:
        return Plan(FLAT, f"{count:,} photos: exact search stays quick")
    why = (f"more than {flat_max:,} photos" if count > flat_max
           else f"exact vectors ({flat_bytes / 2 ** 20:.0f} MB) exceed the "
                f"{memory_mb} MB budget")
    return Plan(IVF_SQ8, f"{count:,} photos, {why}: inverted lists with 8-bit codes")


def describe(family: str, count: int, nprobe: int = 0, recall: float = 0.0) -> str:
    """One line for people: which search, over how many photos, and how close to exact."""
    if family == FLAT:
        return f"exact search over {count:,} photos"
    over = " over the codes" if family == IVF_PQ else ""
    measured = (f", recall@10 {recall:.2f} against exact search{over} when built"
                if recall else "")
    codes = "the library's product codes" if family == IVF_PQ else "8-bit codes"
    return (f"approximate search over {count:,} photos (inverted lists with {codes}, "
            f"{nprobe} lists probed a query{measured})")


def needs_retraining(family: str, count: int, trained_on: int) -> bool:
    """An IVF index whose lists were sized for a much smaller (or larger) library."""
    if family == FLAT or trained_on <= 0:
        return False
    return count > trained_on * RETRAIN_GROWTH or count * RETRAIN_GROWTH < trained_on


def refused_recently(count: int, refused_at: int) -> bool:
    """An exact index that approximate lists could not serve well at ``refused_at``
    photos (``trained_on`` of an exact index): not tried again until 4x that size."""
    return refused_at > 0 and count < refused_at * RETRAIN_GROWTH


def worth_it(nprobe: int, nlist: int) -> bool:
    """Lists that need a quarter of themselves probed to reach the target are no faster
    than exact search in practice, and not exact: keep exact search then."""
    return nprobe <= nlist // 4


# From this many lists on they are learned in two levels and refined twice over all of
# the sample (core/clustering.py): at a million photos 12 s instead of 49 s; the probe
# calibration then chooses twice the lists (bench/ivf_training.py).
TWO_LEVEL_LISTS = 1024


def list_count(count: int) -> int:
    """Inverted lists for ``count`` vectors: about 4 sqrt(N), a power of two."""
    target = 4.0 * math.sqrt(max(count, 1))
    return int(min(65536, max(16, 2 ** round(math.log2(target)))))


def train_ivf(vectors: np.ndarray, seed: int = 0, codes: np.ndarray | None = None
              ) -> tuple[Any, int]:
    """An empty, trained inverted-file inner-product index for vectors like ``vectors``:
    IVF-SQ8, or with ``codes`` (a product quantiser's centres, parts x 256 x dim/parts,
    core/vector_codec.py) IVF-PQ storing those very codes (no residuals), so that the
    index holds what a compact catalog holds.

    Returns the index and how many vectors it was trained for. The coarse lists learn
    from a seeded sample of at most 40 vectors a list (FAISS's own advice is 30-256).
    """
    faiss = faiss_module()
    n, dim = vectors.shape
    nlist = list_count(n)
    rng = np.random.default_rng(seed)
    sample = vectors if n <= 40 * nlist else vectors[np.sort(
        rng.choice(n, 40 * nlist, replace=False))]
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    quantizer = faiss.IndexFlatIP(dim)
    if codes is None:
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist,
                                              faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, int(codes.shape[0]), 8,
                                 faiss.METRIC_INNER_PRODUCT)
        index.by_residual = False
        index.do_polysemous_training = False
    index.own_fields = True
    quantizer.this.disown()
    index.cp.niter = 10
    index.cp.seed = seed
    index.cp.spherical = True  # the vectors are unit length; so are the centroids
    if nlist >= TWO_LEVEL_LISTS or codes is not None:
        # Lists learned here (in two levels when many): FAISS then trains only the coder.
        quantizer.add(spherical_two_level(sample, nlist, seed, refine=2)
                      if nlist >= TWO_LEVEL_LISTS else _spherical(sample, nlist, seed))
    if codes is None:
        index.train(sample)
    else:  # the coder is the catalog's: nothing left to learn
        faiss.copy_array_to_vector(np.ascontiguousarray(codes, dtype=np.float32).ravel(),
                                   index.pq.centroids)
        index.is_trained = True
    # Removal by id and reading a vector back both need an id -> position map.
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    return index, n


def _spherical(sample: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k unit-length centres of ``sample`` by spherical k-means (10 iterations)."""
    faiss = faiss_module()
    learner = faiss.Kmeans(sample.shape[1], k, niter=10, seed=seed, spherical=True,
                           verbose=False, min_points_per_centroid=16)
    learner.train(sample)
    return np.asarray(learner.centroids, dtype=np.float32)


def calibrate_nprobe(index: Any, ids: np.ndarray, vectors: np.ndarray, k: int = 10,
                     target: float = RECALL_TARGET, seed: int = 0) -> tuple[int, float]:
    """The fewest lists probed that find ``target`` of the exact top ``k``.

    ``index`` holds ``vectors`` under ``ids``. The queries are a seeded sample of the
    library's own vectors, each asked for its neighbours other than itself; the truth is
    exact search over the same vectors.
    Returns (nprobe, its recall): the count that reaches the target, doubled for margin,
    since text queries sit farther from the photos than photos sit from each other.
    """
    n = len(vectors)
    nlist = int(index.nlist)
    if n <= k + 1:
        return nlist, 1.0
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, min(CALIBRATION_QUERIES, n), replace=False))
    queries = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    truth = ids[_exact_top(vectors, queries, k + 1)]
    own = ids[rows]

    def recall_at(nprobe: int) -> float:
        index.nprobe = nprobe
        _, found = index.search(queries, k + 1)
        return _recall(found, truth, own, k)

    nprobe = 1
    while nprobe < nlist and recall_at(nprobe) < target:
        nprobe = min(nlist, nprobe * 2)
    final = min(nlist, nprobe * 2)
    return final, recall_at(final)


def _exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Positions of the exact top ``k`` of each query, in chunks to bound memory."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for start in range(0, len(vectors), 65536):
        chunk = np.asarray(vectors[start:start + 65536], dtype=np.float32)
        scores = queries @ chunk.T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        merged_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], axis=1)
        merged_i = np.concatenate([best_i, top + start], axis=1)
        order = np.argsort(-merged_s, axis=1)[:, :k]
        best_s = np.take_along_axis(merged_s, order, 1)
        best_i = np.take_along_axis(merged_i, order, 1)
    return best_i


def _recall(found: np.ndarray, truth: np.ndarray, own: np.ndarray, k: int) -> float:
    """Mean share of each query's exact neighbours (itself excluded) that were found."""
    hits = 0
    total = 0
    for row, exact, self_id in zip(found, truth, own, strict=True):
        want = [int(i) for i in exact if i != self_id][:k]
        got = {int(i) for i in row if i >= 0 and i != self_id}
        hits += sum(1 for i in want if i in got)
        total += len(want)
    return hits / max(total, 1)
