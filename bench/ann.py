"""FAISS vs Annoy: approximate-nearest-neighbour index families on photo embeddings.

    python bench/ann.py --table                          # 100,000 synthetic vectors, 1,000 queries
    python bench/ann.py --synthetic 1000000 --table      # the 1M synthetic run (about 5 GB RAM)
    python bench/ann.py --library ~/.local/share/imagesearch --table   # a real library's vectors
    python bench/ann.py --families flat ivf-flat hnsw annoy --nprobe 32 --k 10
    python bench/ann.py --costs --table                  # encoding time and storage, 1K..1M

Families (all on L2-normalised vectors, so inner product is the cosine):

- flat: IndexFlatIP, exact.
- ivf-flat: IndexIVFFlat, nlist = 4*sqrt(N) inner-product lists, --nprobe probed (default 16).
- ivf-pq: IndexIVFPQ, the same lists, M = --pq-m sub-quantizers (default dim/8: 64 at 512)
  of 8 bits; with --opq an OPQ rotation first (index_factory "OPQM,IVFn,PQMx8").
- ivf-sq8: IndexIVFScalarQuantizer, the same lists, 8 bits a component.
- hnsw: IndexHNSWFlat, M = 32, efConstruction 80, efSearch 64, METRIC_INNER_PRODUCT.
- lsh: IndexLSH, nbits = 2*dim random projections (sign bits), searched by Hamming distance.
- annoy: AnnoyIndex "angular" (the cosine), 50 trees, search_k default (trees * k).

The IVF families train their coarse quantizer (and PQ codebooks) on a seeded sample of
min(N, 50*nlist) vectors (--train-per-list), each family on its own: the build time is
the family's whole cost.

Vectors. --synthetic N (default) draws N base vectors plus --queries held-out vectors
from one seeded mixture, built to look like CLIP image embeddings rather than uniform
noise: x = a*m + b*c_j + s_j*(z @ B) + e*n, then L2-normalised, where m is a direction
shared by all (CLIP embeddings sit in a narrow cone), c_j is the centre of cluster j
(round(sqrt(N)) clusters unless --clusters; centres drawn with a power-law spectrum over a
random rotation, so they are correlated), cluster sizes are lognormal (sigma 1: the
largest is about 100-200 times the smallest), z @ B is a within-cluster variation in a
96-dimensional subspace with a power-law spectrum (a low intrinsic dimension), s_j a
per-cluster spread (lognormal), n isotropic noise. Then 10% of the base vectors are
near-duplicates of an earlier one (bursts of shots of one scene), and 10% of the queries
near-duplicates of a base vector. With a = 0.65, b = 0.55, s = 0.5, e = 0.2 a random pair
has a cosine of about 0.42, two vectors of one cluster about 0.68, and a query's nearest
neighbour at 50,000 about 0.89 (its tenth 0.87): figures chosen to resemble CLIP photo
embeddings, not fitted to real ones (only random-weight models were at hand).
--library DIR instead reads the embeddings of an imagesearch library: the float16
vectors of table `embeddings` in DIR/catalog.sqlite3 (read with sqlite3, no app code),
for --model (default: the model with the most vectors), cast to float32 and
re-normalised. The queries are a seeded sample of them held out (removed from the base),
at most a fifth of the library.

Ground truth: the exact inner-product top k (faiss.knn, the same arithmetic as
IndexFlatIP, without a copy of the base). For each query, with R its k results from the
family (fewer when a family returns padding, -1) and G the exact top k:
precision@k = |R & G| / |R|, recall@k = |R & G| / k, F1@k = their harmonic mean, each
averaged over the queries. Where a family returns k results for every query (all of
them here, unless an IVF query's probed lists hold fewer than k vectors), precision@k =
recall@k = F1@k: all three are reported, as the FAISS vs Annoy comparison did, but they
are then one number. recall@r for r = 5 and 1 is |R_r & G_r| / r, the first r results
against the exact first r (recall@1: the nearest neighbour found first).

Costs per family: build time (train + add, all --threads threads, Annoy's build with
n_jobs = threads), resident memory growth during the build (RSS after minus before, and
the peak above before; psutil if installed, else /proc/self/status), serialized size
(faiss.write_index or Annoy's save, to a temporary file: the bytes of
faiss.serialize_index), query latency p50/p95 for one query at a time on one thread, and
batch throughput (queries/s, all the queries in one call on all threads; Annoy has no
batch call, so --threads Python threads each query a share, its calls releasing the GIL).

--costs prints instead a cost table in the manner of the cross-modal retrieval cost
study, for --sizes (default 1K, 10K, 100K, 1M) images and texts: encoding time from a
per-item rate (--image-rate, default 39.6 photos/s: README "Performance", the first full
index of the 1,692 sample photos with local features off, decoding included;
--text-rate, default 200 texts/s, an ASSUMPTION to replace with a measured figure), the
storage of the vectors (float32, the catalog's float16, IVF-PQ codes: exact arithmetic;
texts' vectors take the same as images'), and each family's build time and file size,
measured up to --max-measured vectors (default 100,000) and extrapolated beyond from the
largest measured size: build time linearly (N log N for hnsw and annoy), file size
linearly (for IVF the bytes a vector plus a centroid a list, for LSH nbits/8 a vector,
over a fixed part). Each cell is marked (m) measured, (x) extrapolated, (c) computed
exactly or (a) from an assumed rate.

One JSON line is printed for the data set, one per family (or per size and family with
--costs), and with --table a Markdown table for the README at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import math
import os
import sqlite3
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit

FAMILIES = ("flat", "ivf-flat", "ivf-pq", "ivf-sq8", "hnsw", "lsh", "annoy", "compact")
NLOGN_FAMILIES = ("hnsw", "annoy")  # build time extrapolated as N log N
COST_SIZES = (1_000, 10_000, 100_000, 1_000_000)
README_IMAGE_RATE = 39.6  # photos/s, README "Performance": first full index, features off
ASSUMED_TEXT_RATE = 200.0  # texts/s: an assumption, not a measurement
CHUNK = 16_384  # rows generated (or read) at a time


# Vectors ---------------------------------------------------------------------------------


def _normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length, in place."""
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


@dataclass(frozen=True)
class Mixture:
    """The synthetic distribution (module docstring): shared direction, clusters, noise."""

    mean: np.ndarray  # (dim,) a * m
    centres: np.ndarray  # (clusters, dim) b * c_j
    weights: np.ndarray  # (clusters,) cluster probabilities
    spreads: np.ndarray  # (clusters,) s_j
    basis: np.ndarray  # (rank, dim) the within-cluster subspace, power-law scaled
    noise: float  # e

    @classmethod
    def make(cls, dim: int, clusters: int, seed: int, rank: int = 96) -> Mixture:
        rng = np.random.default_rng(seed)
        a, b, s, e = 0.65, 0.55, 0.5, 0.2
        mean = rng.standard_normal(dim)
        mean /= np.linalg.norm(mean)
        rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        spectrum = np.arange(1, dim + 1) ** -0.5
        centres = (rng.standard_normal((clusters, dim)) * spectrum) @ rotation.T
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        weights = rng.lognormal(0.0, 1.0, clusters)
        rank = min(rank, dim)
        sub, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
        sub_spectrum = np.arange(1, rank + 1) ** -0.7
        sub_spectrum /= np.linalg.norm(sub_spectrum)
        return cls(mean=(a * mean).astype(np.float32),
                   centres=(b * centres).astype(np.float32),
                   weights=weights / weights.sum(),
                   spreads=(s * rng.lognormal(0.0, 0.3, clusters)).astype(np.float32),
                   basis=(sub * sub_spectrum).T.astype(np.float32).copy(), noise=e)

    def sample_into(self, out: np.ndarray, rng: np.random.Generator) -> None:
        """Fill ``out`` (rows, dim) with normalised draws, CHUNK rows at a time."""
        dim = out.shape[1]
        for start in range(0, len(out), CHUNK):
            rows = out[start:start + CHUNK]
            labels = rng.choice(len(self.weights), len(rows), p=self.weights)
            z = rng.standard_normal((len(rows), len(self.basis)), dtype=np.float32)
            np.matmul(z, self.basis, out=rows)
            rows *= self.spreads[labels, None]
            rows += self.centres[labels]
            rows += self.mean
            rows += (self.noise / math.sqrt(dim)) * rng.standard_normal(rows.shape,
                                                                        dtype=np.float32)
            _normalise(rows)


def _near_copies(target: np.ndarray, rows: np.ndarray, sources: np.ndarray, base: np.ndarray,
                 rng: np.random.Generator, sigma: float = 0.15) -> None:
    """target[rows] = normalise(base[sources] + noise): a near-duplicate (cosine ~0.99)."""
    for start in range(0, len(rows), CHUNK):
        r, s = rows[start:start + CHUNK], sources[start:start + CHUNK]
        copy = base[s] + (sigma / math.sqrt(base.shape[1])) * rng.standard_normal(
            (len(s), base.shape[1]), dtype=np.float32)
        target[r] = _normalise(copy)


def synthetic(n: int, queries: int, dim: int, seed: int = 0, clusters: int | None = None,
              duplicates: float = 0.1) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """(base, queries, description) drawn from one seeded Mixture (module docstring)."""
    clusters = clusters or max(1, round(math.sqrt(n)))
    mixture = Mixture.make(dim, clusters, seed)
    rng = np.random.default_rng(seed + 1)
    base = np.empty((n, dim), np.float32)
    mixture.sample_into(base, rng)
    rows = np.flatnonzero(rng.random(n) < duplicates)
    rows = rows[rows > 0]
    # Sources are earlier rows (read before any row is overwritten: numpy copies first).
    _near_copies(base, rows, (rng.random(len(rows)) * rows).astype(np.int64), base, rng)
    xq = np.empty((queries, dim), np.float32)
    mixture.sample_into(xq, rng)
    qrows = np.flatnonzero(rng.random(queries) < duplicates)
    _near_copies(xq, qrows, rng.integers(0, n, len(qrows)), base, rng)
    return base, xq, {"source": "synthetic", "clusters": clusters, "duplicates": duplicates,
                      "seed": seed}


def library_models(catalog: Path) -> list[tuple[str, int]]:
    """(model, vectors) in the catalog, most vectors first."""
    with contextlib.closing(sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)) as db:
        return [(str(m), int(c)) for m, c in db.execute(
            "SELECT model, COUNT(*) FROM embeddings GROUP BY model ORDER BY COUNT(*) DESC")]


def library_vectors(library: Path, model: str | None = None) -> tuple[np.ndarray, str]:
    """(float32 unit vectors, model) of a library's catalog: its float16 `embeddings`."""
    catalog = library / "catalog.sqlite3"
    if not catalog.is_file():
        raise SystemExit(f"no catalog at {catalog}")
    models = dict(library_models(catalog))
    if not models:
        raise SystemExit(f"{catalog} holds no embeddings")
    model = model or next(iter(models))
    if model not in models:
        raise SystemExit(f"no vectors for {model!r}; the catalog has {sorted(models)}")
    with contextlib.closing(sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)) as db:
        cursor = db.execute("SELECT vector FROM embeddings WHERE model = ? ORDER BY photo_id",
                            (model,))
        first = cursor.fetchone()[0]
        dim = len(first) // 2
        out = np.empty((models[model], dim), np.float32)
        out[0] = np.frombuffer(first, np.float16)
        for row, (blob,) in enumerate(cursor, start=1):
            out[row] = np.frombuffer(blob, np.float16)
    return _normalise(out), model


def held_out(vectors: np.ndarray, queries: int, seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray, int]:
    """(base, queries, count): a seeded sample of at most a fifth of ``vectors``, removed."""
    count = max(1, min(queries, len(vectors) // 5))
    picked = np.zeros(len(vectors), bool)
    picked[np.random.default_rng(seed).choice(len(vectors), count, replace=False)] = True
    return vectors[~picked], vectors[picked], count


# Memory ----------------------------------------------------------------------------------


def _status_bytes(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return _status_bytes("VmRSS")


def release_freed() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc's malloc_trim), so
    that one family's freed index does not hide the next one's growth."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak() -> bool:
    """Restart the kernel's peak-RSS count (VmHWM) from now; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# Families --------------------------------------------------------------------------------


@dataclass
class Params:
    k: int = 10
    nprobe: int = 16
    pq_m: int | None = None  # None: dim // 8
    opq: bool = False
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    lsh_bits: int | None = None  # None: 2 * dim
    annoy_trees: int = 50
    train_per_list: int = 50
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    seed: int = 0


def nlist_for(n: int) -> int:
    return max(1, round(4 * math.sqrt(n)))


def pq_m_for(dim: int, params: Params) -> int:
    m = params.pq_m or max(1, dim // 8)
    if dim % m:
        raise SystemExit(f"--pq-m {m} does not divide the dimension {dim}")
    return m


class Searcher(ABC):
    """A built index behind one interface: search a batch, save, describe."""

    def __init__(self, name: str, params: dict[str, object]) -> None:
        self.name, self.params = name, params

    @abstractmethod
    def search(self, xq: np.ndarray, k: int, threads: int) -> np.ndarray:
        """Ids of the k nearest of each query row (-1 where fewer were found)."""

    @abstractmethod
    def saved_bytes(self) -> int:
        """The size of the index written to a file, as the family's own save writes it."""

    @abstractmethod
    def close(self) -> None:
        """Free the index (and the saved file it may still map)."""


class FaissSearcher(Searcher):
    def __init__(self, name: str, params: dict[str, object], index: faiss.Index) -> None:
        super().__init__(name, params)
        self.index = index

    def search(self, xq: np.ndarray, k: int, threads: int) -> np.ndarray:
        faiss.omp_set_num_threads(threads)
        return np.asarray(self.index.search(xq, k)[1])

    def saved_bytes(self) -> int:
        # The bytes of faiss.serialize_index, without a second copy of the index in memory.
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "index.faiss"
            faiss.write_index(self.index, str(file))
            return file.stat().st_size

    def close(self) -> None:
        self.index.reset()  # frees the vectors now, so the next family's growth is its own


class AnnoySearcher(Searcher):
    def __init__(self, name: str, params: dict[str, object], index: Any, dim: int) -> None:
        super().__init__(name, params)
        self.index, self.dim = index, dim
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    def search(self, xq: np.ndarray, k: int, threads: int) -> np.ndarray:
        out = np.full((len(xq), k), -1, np.int64)

        def part(rows: range) -> None:
            for i in rows:
                found = self.index.get_nns_by_vector(xq[i], k)
                out[i, :len(found)] = found

        if threads <= 1 or len(xq) < 2 * threads:
            part(range(len(xq)))
        else:
            step = math.ceil(len(xq) / threads)
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(part, [range(s, min(s + step, len(xq)))
                                     for s in range(0, len(xq), step)]))
        return out

    def saved_bytes(self) -> int:
        # Annoy's save re-opens the index from the file (mmap), as the eval stage uses it:
        # the file is kept until close().
        self._folder = tempfile.TemporaryDirectory()
        file = Path(self._folder.name) / "index.annoy"
        self.index.save(str(file))
        return file.stat().st_size

    def close(self) -> None:
        self.index.unload()
        if self._folder is not None:
            self._folder.cleanup()


def _train_sample(base: np.ndarray, count: int, seed: int) -> np.ndarray:
    if count >= len(base):
        return base
    rows = np.sort(np.random.default_rng(seed).choice(len(base), count, replace=False))
    return base[rows]


def build(name: str, base: np.ndarray, p: Params) -> tuple[Searcher, float, float]:
    """(searcher, train seconds, add seconds) for family ``name`` over ``base``."""
    n, dim = base.shape
    faiss.omp_set_num_threads(p.threads)
    ip = faiss.METRIC_INNER_PRODUCT
    info: dict[str, object]
    if name == "annoy":
        from annoy import AnnoyIndex

        index = AnnoyIndex(dim, "angular")
        index.set_seed(p.seed + 1)
        started = time.perf_counter()
        for i in range(n):
            index.add_item(i, base[i])
        added = time.perf_counter()
        index.build(p.annoy_trees, n_jobs=p.threads)
        info = {"n_trees": p.annoy_trees, "search_k": "default (n_trees*k)"}
        return (AnnoySearcher(name, info, index, dim), time.perf_counter() - added,
                added - started)
    if name == "compact":
        return _compact(base, p)
    nlist = nlist_for(n)
    built: faiss.Index
    if name == "flat":
        built, info = faiss.IndexFlatIP(dim), {}
    elif name == "ivf-flat":
        built = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, ip)
        info = {"nlist": nlist, "nprobe": p.nprobe}
    elif name == "ivf-pq":
        m = pq_m_for(dim, p)
        if p.opq:
            built = faiss.index_factory(dim, f"OPQ{m},IVF{nlist},PQ{m}x8", ip)
        else:
            built = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, 8, ip)
        info = {"nlist": nlist, "nprobe": p.nprobe, "M": m, "bits": 8, "opq": p.opq}
    elif name == "ivf-sq8":
        built = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist,
                                              faiss.ScalarQuantizer.QT_8bit, ip)
        info = {"nlist": nlist, "nprobe": p.nprobe}
    elif name == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, p.hnsw_m, ip)
        hnsw.hnsw.efConstruction = p.ef_construction
        hnsw.hnsw.efSearch = p.ef_search
        built = hnsw
        info = {"M": p.hnsw_m, "efConstruction": p.ef_construction, "efSearch": p.ef_search}
    elif name == "lsh":
        nbits = p.lsh_bits or 2 * dim
        built = faiss.IndexLSH(dim, nbits, True)  # rotate_data: random projections
        info = {"nbits": nbits}
    else:
        raise SystemExit(f"unknown family {name!r}; choose from {', '.join(FAMILIES)}")
    started = time.perf_counter()
    if not built.is_trained:
        built.train(_train_sample(base, p.train_per_list * nlist, p.seed))
        if name.startswith("ivf"):
            info["train_sample"] = min(n, p.train_per_list * nlist)
    trained = time.perf_counter()
    built.add(base)
    added = time.perf_counter()
    if name.startswith("ivf"):
        faiss.extract_index_ivf(built).nprobe = p.nprobe
    return FaissSearcher(name, info, built), trained - started, added - trained


def _compact(base: np.ndarray, p: Params) -> tuple[Searcher, float, float]:
    """A compact library as the app builds it (services/stored_vectors.py): 128-byte
    product codes learned from the vectors replace them, and IVF-PQ over those very codes
    is searched with the lists probed that the app's calibration picks (recall 0.97
    against exact search over what the codes stand for). Its recall against exact search
    over the original vectors is the cost of keeping only the codes."""
    from imagesearch.core.index_family import calibrate_nprobe, train_ivf
    from imagesearch.core.vector_codec import CODE_BYTES, VectorCodec

    faiss.omp_set_num_threads(p.threads)
    started = time.perf_counter()
    codec = VectorCodec.train(base, math.gcd(base.shape[1], CODE_BYTES), seed=p.seed)
    decoded = np.concatenate([codec.decode(codec.encode(base[i:i + CHUNK]))
                              for i in range(0, len(base), CHUNK)])
    index, _ = train_ivf(decoded, seed=p.seed, codes=codec.centres)
    trained = time.perf_counter()
    ids = np.arange(len(base), dtype=np.int64)
    index.add_with_ids(decoded, ids)
    added = time.perf_counter()
    index.nprobe, recall = calibrate_nprobe(index, ids, decoded, seed=p.seed)
    info = {"codes": f"{codec.parts} B", "nlist": int(index.nlist), "nprobe": index.nprobe,
            "recall_vs_codes": round(recall, 3)}
    return FaissSearcher("compact", info, index), trained - started, added - trained


# Measuring -------------------------------------------------------------------------------


def exact_top(base: np.ndarray, xq: np.ndarray, k: int, threads: int) -> np.ndarray:
    """The exact inner-product top k of each query (ids, best first)."""
    faiss.omp_set_num_threads(threads)
    return np.asarray(faiss.knn(xq, base, k, metric=faiss.METRIC_INNER_PRODUCT)[1])


def accuracy(found: np.ndarray, truth: np.ndarray, k: int) -> dict[str, float]:
    """precision, recall and F1 at k, recall@5 and recall@1 (module docstring), means."""
    prec, rec, f1s = [], [], []
    r5, r1 = [], []
    for got, true in zip(found, truth, strict=True):
        returned = got[:k][got[:k] >= 0]
        hits = len(np.intersect1d(returned, true[:k]))
        p = hits / len(returned) if len(returned) else 0.0
        r = hits / k
        prec.append(p)
        rec.append(r)
        f1s.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
        r5.append(len(np.intersect1d(got[:5][got[:5] >= 0], true[:5])) / min(5, k))
        r1.append(float(got[0] == true[0]))
    return {"precision_at_k": float(np.mean(prec)), "recall_at_k": float(np.mean(rec)),
            "f1_at_k": float(np.mean(f1s)), "recall_at_5": float(np.mean(r5)),
            "recall_at_1": float(np.mean(r1))}


def measure_build(name: str, base: np.ndarray, p: Params
                  ) -> tuple[Searcher, dict[str, object]]:
    """Build ``name`` and return it with its build time, memory growth and file size."""
    release_freed()
    before = rss_bytes()
    peak_ok = reset_peak()
    searcher, train_s, add_s = build(name, base, p)
    after, peak = rss_bytes(), _status_bytes("VmHWM") if peak_ok else None
    size = searcher.saved_bytes()
    mb = 1e6
    return searcher, {
        "family": name, "params": searcher.params, "n": len(base),
        "build_s": round(train_s + add_s, 4), "train_s": round(train_s, 4),
        "add_s": round(add_s, 4),
        "mem_mb": None if before is None or after is None else round((after - before) / mb, 1),
        "peak_mb": None if before is None or peak is None else round((peak - before) / mb, 1),
        "size_bytes": size, "bytes_per_vector": round(size / max(len(base), 1), 1)}


def measure_family(name: str, base: np.ndarray, xq: np.ndarray, truth: np.ndarray,
                   p: Params) -> dict[str, object]:
    """One family's whole row: build costs, latency, throughput and accuracy."""
    searcher, row = measure_build(name, base, p)
    searcher.search(xq[:1], p.k, 1)  # warm up
    latencies = []
    for i in range(len(xq)):
        started = time.perf_counter()
        searcher.search(xq[i:i + 1], p.k, 1)
        latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    found = searcher.search(xq, p.k, p.threads)
    batch_s = time.perf_counter() - started
    p50, p95 = np.percentile(latencies, [50, 95]) * 1000
    row.update({"queries": len(xq), "k": p.k, "p50_ms": round(float(p50), 4),
                "p95_ms": round(float(p95), 4), "threads": p.threads,
                "batch_qps": round(len(xq) / batch_s, 1)})
    row.update({key: round(v, 4) for key, v in accuracy(found, truth, p.k).items()})
    row["load_average"] = round(os.getloadavg()[0], 2)
    searcher.close()
    del searcher
    release_freed()
    return row


def compare(base: np.ndarray, xq: np.ndarray, families: Sequence[str], p: Params,
            report: Callable[[dict[str, object]], None] = emit) -> list[dict[str, object]]:
    """Every family's row, ``report``ed as it is done."""
    started = time.perf_counter()
    truth = exact_top(base, xq, p.k, p.threads)
    report({"ground_truth": "faiss.knn inner product", "n": len(base), "dim": base.shape[1],
            "queries": len(xq), "k": p.k, "seconds": round(time.perf_counter() - started, 3)})
    rows = []
    for name in families:
        row = measure_family(name, base, xq, truth, p)
        report(row)
        rows.append(row)
    return rows


# Costs -----------------------------------------------------------------------------------


@dataclass
class Cell:
    value: float
    mark: str  # m measured, x extrapolated, c computed exactly, a from an assumed rate


def extrapolate(value: float, n0: int, n: int, nlogn: bool) -> float:
    if nlogn:
        return value * (n * math.log(n)) / (n0 * math.log(n0))
    return value * n / n0


def ivf_bytes_per_vector(name: str, dim: int, p: Params) -> int | None:
    """An IVF family's bytes a vector in its lists (code and 8-byte id); None if not IVF."""
    codes = {"ivf-flat": dim * 4, "ivf-sq8": dim, "ivf-pq": pq_m_for(dim, p)}.get(name)
    return None if codes is None else codes + 8


def extrapolate_size(name: str, size0: float, n0: int, n: int, dim: int, p: Params) -> float:
    """A family's file size at n from its measured size at n0: linear, except that an IVF
    file is a part per vector (its code and id) plus a part per list (a float32 centroid)
    with 4*sqrt(N) lists, and LSH's nbits/8 a vector; the rest is fixed (codebooks, the
    LSH projection, headers)."""
    if name == "lsh":
        return size0 + (n - n0) * (p.lsh_bits or 2 * dim) / 8
    per_vector = ivf_bytes_per_vector(name, dim, p)
    if per_vector is None:
        return size0 * n / n0
    return size0 + (n - n0) * per_vector + (nlist_for(n) - nlist_for(n0)) * dim * 4


def costs(base: np.ndarray, dim: int, sizes: Sequence[int], max_measured: int,
          families: Sequence[str], p: Params, image_rate: float, text_rate: float,
          text_assumed: bool, report: Callable[[dict[str, object]], None] = emit
          ) -> dict[str, dict[int, Cell]]:
    """Row label -> size -> Cell: encoding, storage, and each family's build and file.

    ``base`` holds at least the vectors to measure on: families are built on its first
    n rows for each size n <= max_measured (and <= len(base)); sizes beyond are
    extrapolated from the largest measured (measured at min(max_measured, len(base)) when
    no size is small enough)."""
    limit = min(max_measured, len(base))
    measured = [n for n in sizes if n <= limit]
    anchors = measured or [limit]
    table: dict[str, dict[int, Cell]] = {}
    enc_mark = "a" if text_assumed else "x"
    table[f"image encoding ({image_rate:g} photos/s)"] = {
        n: Cell(n / image_rate, "x") for n in sizes}
    table[f"text encoding ({text_rate:g} texts/s)"] = {
        n: Cell(n / text_rate, enc_mark) for n in sizes}
    m = pq_m_for(dim, p)
    table[f"vectors, float32 ({dim} x 4 B)"] = {n: Cell(n * dim * 4, "c") for n in sizes}
    table[f"vectors, float16 as the catalog ({dim} x 2 B)"] = {
        n: Cell(n * dim * 2, "c") for n in sizes}
    table[f"IVF-PQ codes ({m} B a vector)"] = {n: Cell(n * m, "c") for n in sizes}
    for name in families:
        builds: dict[int, Cell] = {}
        files: dict[int, Cell] = {}
        for n in anchors:
            searcher, row = measure_build(name, base[:n], p)
            searcher.close()
            del searcher
            release_freed()
            row["load_average"] = round(os.getloadavg()[0], 2)
            report(row)
            builds[n] = Cell(float(row["build_s"]), "m")  # type: ignore[arg-type]
            files[n] = Cell(float(row["size_bytes"]), "m")  # type: ignore[arg-type]
        n0 = max(anchors)
        for n in sizes:
            if n not in builds:
                builds[n] = Cell(extrapolate(builds[n0].value, n0, n,
                                             name in NLOGN_FAMILIES), "x")
                files[n] = Cell(extrapolate_size(name, files[n0].value, n0, n, dim, p), "x")
        table[f"build: {name}"] = {n: builds[n] for n in sizes}
        table[f"index file: {name}"] = {n: files[n] for n in sizes}
    return table


# Tables ----------------------------------------------------------------------------------


def _seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms" if s >= 0.0095 else f"{s * 1000:.1f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _bytes(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}" if b < 100 * scale else f"{b / scale:.0f} {unit}"
    return f"{b:.0f} B"


def _count(n: int) -> str:
    for suffix, scale in (("M", 1_000_000), ("K", 1_000)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return f"{n:,}"


def cost_markdown(table: dict[str, dict[int, Cell]]) -> str:
    sizes = list(next(iter(table.values())))
    lines = ["| | " + " | ".join(_count(n) for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for label, cells in table.items():
        fmt = _bytes if label.startswith(("vectors", "IVF-PQ", "index file")) else _seconds
        lines.append(f"| {label} | "
                     + " | ".join(f"{fmt(c.value)} ({c.mark})" for c in cells.values()) + " |")
    lines.append("\n(m) measured, (x) extrapolated, (c) computed exactly, "
                 "(a) from an assumed rate; kB, MB, GB are powers of 10.")
    return "\n".join(lines)


def _describe(params: object) -> str:
    if not isinstance(params, dict):
        return ""
    shown = {k: v for k, v in params.items() if k not in ("train_sample", "search_k")}
    return ", ".join(f"{k} {v}" for k, v in shown.items() if v is not False) or "—"


def ann_markdown(rows: Sequence[dict[str, Any]]) -> str:
    k = rows[0]["k"] if rows else 10
    lines = [f"| family | parameters | build | RSS growth / peak | index size | "
             f"p50 / p95 latency | batch q/s | P@{k} | R@{k} | F1@{k} | R@5 | R@1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mem = ("—" if r["mem_mb"] is None else f"{r['mem_mb']:.0f}"
               + ("" if r["peak_mb"] is None else f" / {r['peak_mb']:.0f}") + " MB")
        lines.append(
            f"| {r['family']} | {_describe(r['params'])} | {_seconds(r['build_s'])} | {mem} | "
            f"{_bytes(r['size_bytes'])} | {r['p50_ms']:.2f} / {r['p95_ms']:.2f} ms | "
            f"{r['batch_qps']:,.0f} | {r['precision_at_k']:.3f} | {r['recall_at_k']:.3f} | "
            f"{r['f1_at_k']:.3f} | {r['recall_at_5']:.3f} | {r['recall_at_1']:.3f} |")
    return "\n".join(lines)


# Command line ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", type=int, default=100_000, metavar="N",
                    help="synthetic base vectors (default 100,000)")
    ap.add_argument("--library", type=Path, help="use this imagesearch library's vectors")
    ap.add_argument("--model", help="with --library: whose vectors (default: the most)")
    ap.add_argument("--dim", type=int, default=512, help="synthetic dimension (default 512)")
    ap.add_argument("--clusters", type=int, help="synthetic clusters (default sqrt(N))")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--pq-m", type=int, help="IVF-PQ sub-quantizers (default dim/8)")
    ap.add_argument("--opq", action="store_true", help="IVF-PQ with an OPQ rotation")
    ap.add_argument("--ef-search", type=int, default=64)
    ap.add_argument("--lsh-bits", type=int, help="LSH bits (default 2*dim)")
    ap.add_argument("--annoy-trees", type=int, default=50)
    ap.add_argument("--train-per-list", type=int, default=50,
                    help="IVF training vectors per list (default 50)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table", action="store_true", help="print a Markdown table at the end")
    ap.add_argument("--costs", action="store_true", help="the cost table instead")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(COST_SIZES))
    ap.add_argument("--max-measured", type=int, default=100_000)
    ap.add_argument("--image-rate", type=float, default=README_IMAGE_RATE,
                    help="photos/s (default 39.6, README 'Performance')")
    ap.add_argument("--text-rate", type=float,
                    help=f"texts/s (default {ASSUMED_TEXT_RATE:g}, an assumption)")
    args = ap.parse_args(argv)
    p = Params(k=args.k, nprobe=args.nprobe, pq_m=args.pq_m, opq=args.opq,
               ef_search=args.ef_search, lsh_bits=args.lsh_bits,
               annoy_trees=args.annoy_trees, train_per_list=args.train_per_list,
               threads=args.threads, seed=args.seed)
    faiss.omp_set_num_threads(p.threads)
    started = time.perf_counter()
    if args.costs:
        wanted = min(args.max_measured, max(args.sizes))
        if args.library:
            base, model = library_vectors(args.library.expanduser(), args.model)
            base = base[:wanted]
            info: dict[str, object] = {"source": "library", "model": model}
        else:
            base, _, info = synthetic(wanted, 0, args.dim, args.seed, args.clusters)
        emit({"data": info, "n": len(base), "dim": base.shape[1]})
        text_rate = args.text_rate or ASSUMED_TEXT_RATE
        table = costs(base, base.shape[1], args.sizes, args.max_measured, args.families, p,
                      args.image_rate, text_rate, args.text_rate is None)
        emit({"costs": {label: {str(n): [round(c.value, 4), c.mark] for n, c in row.items()}
                        for label, row in table.items()},
              "seconds": round(time.perf_counter() - started, 1)})
        if args.table:
            print(cost_markdown(table))
        return
    if args.library:
        vectors, model = library_vectors(args.library.expanduser(), args.model)
        base, xq, held = held_out(vectors, args.queries, args.seed)
        del vectors
        info = {"source": "library", "model": model, "queries": f"{held} held out"}
    else:
        base, xq, info = synthetic(args.synthetic, args.queries, args.dim, args.seed,
                                   args.clusters)
    emit({"data": info, "n": len(base), "dim": base.shape[1], "queries": len(xq),
          "generated_s": round(time.perf_counter() - started, 2)})
    rows = compare(base, xq, args.families, p)
    emit({"seconds": round(time.perf_counter() - started, 1)})
    if args.table:
        print(ann_markdown(rows))


if __name__ == "__main__":
    main()
