"""What learning the visual vocabulary costs at the end of indexing a library.

    python bench/vocabulary.py                  # as for the 1,692 sample photos, compact
    python bench/vocabulary.py --photos 10000 --per-photo 225

The descriptors are random unit vectors in RootSIFT's shape and number (the k-means time
depends on how many there are and on the vocabulary size, not on their values). It prints
the vocabulary size the app would choose, the seconds FAISS k-means takes on the training
sample the app uses, and the seconds to assign every descriptor to its word.
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
from imagesearch.core.local_index import TRAIN_SAMPLE, Vocabulary, vocabulary_size
from imagesearch.services.local_search import TRAIN_DESCRIPTORS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=1692)
    ap.add_argument("--per-photo", type=int, default=FEATURE_MODES["compact"].count,
                    help="keypoints a photo (default: the compact mode's)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.photos * args.per_photo
    descriptors = np.abs(rng.standard_normal((n, 128), dtype=np.float32))
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    words = vocabulary_size(n)
    sample = descriptors[:min(n, TRAIN_DESCRIPTORS, TRAIN_SAMPLE)]
    started = time.perf_counter()
    vocabulary = Vocabulary.train(sample, words)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    vocabulary.assign(descriptors)
    assign_s = time.perf_counter() - started
    emit({"photos": args.photos, "descriptors": n, "words": words,
          "training_sample": len(sample), "train_s": round(train_s, 1),
          "assign_s": round(assign_s, 1), "load_average": round(os.getloadavg()[0], 2)})


if __name__ == "__main__":
    main()
