"""Learning the inverted lists of the approximate index: flat k-means or two levels.

Run: ``python bench/ivf_training.py --library DIR`` on a library with vectors, for
example the one ``python bench/scale.py --photos 1000000 --keep --dir D`` leaves in
``D/library``.

For each way of learning the lists (flat spherical k-means over the training sample,
as FAISS trains an IVF; two levels alone; two levels refined by 2 iterations, as
``core/index_family.train_ivf`` does from 1,024 lists on) it prints the time to learn
the lists, then fills an IVF-SQ8 index with all of the library's vectors and runs the
app's own probe calibration (``calibrate_nprobe``): the lists a query probes, and the
recall@10 it measured there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scale import MODEL


def main() -> None:
    from imagesearch.config import Settings
    from imagesearch.core import index_family
    from imagesearch.core.clustering import spherical_two_level
    from imagesearch.core.native_libs import faiss_module
    from imagesearch.storage.catalog import Catalog
    from imagesearch.storage.database import open_catalog_engine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", type=Path, required=True)
    args = ap.parse_args()
    faiss = faiss_module()
    settings = Settings.load(args.library)
    catalog = Catalog(open_catalog_engine(settings.catalog_path))
    ids, vectors = catalog.vectors(MODEL)
    catalog.close()
    n, dim = vectors.shape
    nlist = index_family.list_count(n)
    rng = np.random.default_rng(0)  # the sample train_ivf draws
    sample = vectors if n <= 40 * nlist else vectors[np.sort(
        rng.choice(n, 40 * nlist, replace=False))]
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    print(f"{n:,} vectors, {nlist:,} lists, a sample of {len(sample):,}", flush=True)
    for way in ("flat", "two levels", "two levels, refined twice"):
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist,
                                              faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.niter, index.cp.seed, index.cp.spherical = 10, 0, True
        started = time.perf_counter()
        if way != "flat":
            quantizer.add(spherical_two_level(sample, nlist, 0,
                                              refine=2 if "refined" in way else 0))
        index.train(sample)
        learned = time.perf_counter() - started
        for start in range(0, n, 65536):
            index.add_with_ids(vectors[start:start + 65536], ids[start:start + 65536])
        nprobe, recall = index_family.calibrate_nprobe(index, ids, vectors)
        print(json.dumps({"lists": way, "learn_s": round(learned, 1), "nprobe": nprobe,
                          "recall_at_10": round(recall, 3)}), flush=True)
        del index, quantizer


if __name__ == "__main__":
    main()
