"""What learning the visual vocabulary costs at the end of indexing a library.

    python bench/vocabulary.py                       # as for the 1,692 sample photos, compact
    python bench/vocabulary.py --photos 10000 --per-photo 225
    python bench/vocabulary.py --library LIB --flat  # LIB's own stored descriptors

The descriptors are random unit vectors in RootSIFT's shape and number (the k-means time
depends on how many there are and on the vocabulary size, not on their values), or with
--library the compact records of an indexed library. It prints the vocabulary size the app
chooses, the seconds its two-level k-means takes on the training sample the app uses, the
seconds to assign every descriptor its word, and how often that word is the exact nearest
one. With --flat, the same run also times one flat FAISS k-means (the way before) of the
same size on the same sample, and the mean squared quantisation error of both.

Quality on retrieval is the eval command's to measure (README, "Finding this very object").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit
from imagesearch.core.local_features import FEATURE_MODES
from imagesearch.core.local_index import TRAIN_SAMPLE, Vocabulary, kmeans, vocabulary_size
from imagesearch.services.local_search import TRAIN_DESCRIPTORS


def library_descriptors(library: Path) -> np.ndarray:
    from imagesearch.core.feature_codec import decode_features
    from imagesearch.storage.catalog import Catalog
    from imagesearch.storage.database import open_catalog_engine

    catalog = Catalog(open_catalog_engine(library / "catalog.sqlite3"))
    found = [decode_features(blob).descriptors
             for chunk in catalog.iter_features(FEATURE_MODES["compact"].extractor_id)
             for _, blob in chunk]
    if not found:
        raise SystemExit(f"{library} holds no compact local features")
    return np.concatenate(found)


def quantisation_error(centroids: np.ndarray, data: np.ndarray) -> tuple[float, np.ndarray]:
    import faiss

    flat = faiss.IndexFlatL2(centroids.shape[1])
    flat.add(np.ascontiguousarray(centroids, dtype=np.float32))
    distances, nearest = flat.search(data, 1)
    return float(distances.mean()), nearest[:, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=1692)
    ap.add_argument("--per-photo", type=int, default=FEATURE_MODES["compact"].count,
                    help="keypoints a photo (default: the compact mode's)")
    ap.add_argument("--library", type=Path, help="use this library's stored descriptors")
    ap.add_argument("--flat", action="store_true", help="also time flat k-means")
    args = ap.parse_args()
    if args.library:
        descriptors = library_descriptors(args.library)
    else:
        rng = np.random.default_rng(0)
        descriptors = np.abs(rng.standard_normal((args.photos * args.per_photo, 128),
                                                 dtype=np.float32))
        descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    n = len(descriptors)
    words = vocabulary_size(n)
    sample = descriptors[:min(n, TRAIN_DESCRIPTORS, TRAIN_SAMPLE)]
    started = time.perf_counter()
    vocabulary = Vocabulary.train(sample, words)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    assigned = vocabulary.assign(descriptors)[:, 0]
    assign_s = time.perf_counter() - started
    check = descriptors[:100_000]
    error, exact = quantisation_error(vocabulary.centroids, check)
    row: dict[str, object] = {
        "descriptors": n, "words": vocabulary.k, "training_sample": len(sample),
        "two_level_train_s": round(train_s, 1), "assign_s": round(assign_s, 1),
        "assigned_exact_nearest": round(float((assigned[:len(check)] == exact).mean()), 4),
        "two_level_mse": round(error, 5)}
    if args.flat:
        started = time.perf_counter()
        flat = kmeans(sample, vocabulary.k, seed=0)
        flat_s = time.perf_counter() - started
        row.update({"flat_train_s": round(flat_s, 1), "ratio": round(train_s / flat_s, 3),
                    "flat_mse": round(quantisation_error(flat, check)[0], 5)})
    emit({**row, "load_average": round(os.getloadavg()[0], 2)})


if __name__ == "__main__":
    main()
