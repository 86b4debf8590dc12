"""What making a library compact costs and saves: `python bench/compact.py --library DIR`.

Works on a copy of DIR's catalog (in --work, default a temporary folder; DIR is never
changed) through the app's own code (services/stored_vectors.py, services/vector_store.py):

1. reads the float16 vectors of the library's model and picks held-out queries among
   them (photos of the library standing in for queries, themselves excluded from the
   truth);
2. learns the codes (timed: no lock held) and codes the catalog in place (timed: one
   transaction, the catalog's write lock held), then VACUUMs it and compares
   the file's bytes a photo with the standard catalog's (also VACUUMed);
3. builds the compact library's search index (IVF-PQ over the codes, the probe count
   calibrated as the app does), timed, and its file's bytes a photo;
4. searches it: one query at a time, p50 and p95, and recall@10 against exact search
   over the original float vectors (the cost of keeping only the codes), beside exact
   search over the codes themselves.

Prints one JSON line a step and a summary. bench/scale.py fabricates a 1M-photo library
to run it on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit


def _vacuumed_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
    return path.stat().st_size


def _exact_top(base: np.ndarray, queries: np.ndarray, k: int, own: np.ndarray
               ) -> np.ndarray:
    """Row numbers of each query's exact top k in ``base``, its own row left out."""
    best_s = np.full((len(queries), k + 1), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k + 1), np.int64)
    for start in range(0, len(base), 65536):
        scores = queries @ np.asarray(base[start:start + 65536], np.float32).T
        merged_s = np.concatenate([best_s, scores], axis=1)
        merged_i = np.concatenate([best_i, np.arange(start, start + scores.shape[1])[None]
                                   .repeat(len(queries), 0)], axis=1)
        order = np.argsort(-merged_s, axis=1)[:, :k + 1]
        best_s = np.take_along_axis(merged_s, order, 1)
        best_i = np.take_along_axis(merged_i, order, 1)
    return np.stack([[i for i in row if i != o][:k] for row, o in zip(best_i, own,
                                                                     strict=True)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", type=Path, required=True, help="a library folder (read only)")
    ap.add_argument("--model", help="whose vectors (default: the library's settings)")
    ap.add_argument("--work", type=Path, help="where the copy goes (default: a temp folder)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args(argv)

    from imagesearch.config import Settings
    from imagesearch.services.stored_vectors import StoredVectors
    from imagesearch.services.vector_store import VectorStore
    from imagesearch.storage.catalog import Catalog
    from imagesearch.storage.database import open_catalog_engine

    model = args.model or Settings.load(args.library).model_id
    work = args.work or Path(tempfile.mkdtemp(prefix="compact-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    copy = work / "catalog.sqlite3"
    started = time.perf_counter()
    shutil.copyfile(args.library / "catalog.sqlite3", copy)
    catalog = Catalog(open_catalog_engine(copy))  # migrated to this version's schema
    ids, floats = catalog.vectors(model)
    n = len(ids)
    if n == 0:
        raise SystemExit(f"{args.library} holds no vectors for {model}")
    catalog.close()
    for stale in work.glob("catalog.backup-*"):
        stale.unlink()  # the migration's backup of the copy
    standard_bytes = _vacuumed_bytes(copy)
    emit({"step": "copied", "photos": n, "model": model, "seconds":
          round(time.perf_counter() - started, 1),
          "catalog_bytes_per_photo": round(standard_bytes / n, 1)})
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(n, min(args.queries, n), replace=False))
    queries = np.ascontiguousarray(floats[rows])
    truth = _exact_top(floats, queries, args.k, rows)
    del floats

    catalog = Catalog(open_catalog_engine(copy))
    stored = StoredVectors(catalog, model)
    started = time.perf_counter()
    codec = stored.learn()
    learned = time.perf_counter()
    if codec is None or not stored.code_with(codec):
        raise SystemExit("the library is too small to code (or coded already)")
    coding_s = time.perf_counter() - learned
    catalog.close()
    compact_bytes = _vacuumed_bytes(copy)
    emit({"step": "coded", "learn_seconds": round(learned - started, 1),
          "code_seconds": round(coding_s, 1), "code_bytes": codec.parts,
          "catalog_bytes_per_photo": round(compact_bytes / n, 1),
          "standard_catalog_bytes_per_photo": round(standard_bytes / n, 1)})

    catalog = Catalog(open_catalog_engine(copy))
    store = VectorStore(catalog, work / "index", model, save_delay_s=0, background=False)
    started = time.perf_counter()
    index = store.index()
    assert index is not None
    store._touched = True  # the upgrade a one-shot command makes as it closes
    store.upgrade_now()
    index = store.index()
    assert index is not None
    build_s = time.perf_counter() - started
    store.flush()
    index_bytes = sum(p.stat().st_size for p in (work / "index").iterdir() if p.is_file())
    emit({"step": "indexed", "family": index.family, "nprobe": index.nprobe,
          "calibrated_recall_vs_codes": round(index.recall, 3),
          "seconds": round(build_s, 1), "index_bytes_per_photo": round(index_bytes / n, 1)})

    latencies = []
    found = []
    for q in queries:
        t0 = time.perf_counter()
        _, got = index.search(q[None], args.k + 1)
        latencies.append(time.perf_counter() - t0)
        found.append(got[0])
    position = {int(pid): i for i, pid in enumerate(ids)}
    hits = 0
    for row, got, want in zip(rows, found, truth, strict=True):
        mine = {position[int(p)] for p in got if p >= 0} - {int(row)}
        hits += len(mine & {int(w) for w in want})
    decoded = stored.all()[1]
    ceiling = _exact_top(decoded, queries, args.k, rows)
    ceiling_hits = sum(len(set(c.tolist()) & set(w.tolist()))
                       for c, w in zip(ceiling, truth, strict=True))
    p50, p95 = np.percentile(latencies, [50, 95]) * 1000
    summary = {"step": "searched", "photos": n, "queries": len(rows), "k": args.k,
               "p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3),
               "recall_at_k": round(hits / (len(rows) * args.k), 3),
               "recall_at_k_codes_exact": round(ceiling_hits / (len(rows) * args.k), 3)}
    emit(summary)
    store.close()
    catalog.close()
    print(json.dumps({"work": str(work)}))


if __name__ == "__main__":
    main()
