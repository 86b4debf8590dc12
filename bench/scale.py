"""A library of N photos, fabricated in minutes with no model: rescan, index and query costs.

Run: ``python bench/scale.py --photos 100000 [--dir DIR] [--keep]``.

What it builds: N tiny files with image names in folders of 1,000 (their bytes are never
read: an unchanged rescan compares size and time only), and a real catalog that lists
them as indexed, each with a float16 vector drawn from bench/ann.py's seeded mixture of
clusters with near-duplicates (the shape of CLIP photo embeddings), written through the
app's own ``Catalog.store``. Local features are off in this library, so a rescan has
nothing to backfill.

What it measures, each through the app's own code:
- rescan: ``IndexingService.run()`` over the unchanged library, twice (the second with
  the operating system's file cache warm, as on a machine in use);
- index: the first open, which rebuilds the exact index from the catalog; the family
  change the size calls for (``VectorStore.upgrade_now``: IVF-SQ8 training and its
  calibration past 200,000 photos); the file written; and the next open from the files;
- query: the index's top 60 for held-out query vectors, one at a time, plus the catalog
  lookup that turns ids into hits (what a text query costs after its encoding, which
  takes about 20 ms), p50 and p95; recall@10 against exact search; and the p50 of a
  search filtered to one folder of 1,000 photos (the folder's ids read as the app does).
The window's start on such a library: ``python bench/gui_startup.py --library DIR``
(``--keep`` leaves DIR in place for it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ann import synthetic
from imagesearch.config import Settings
from imagesearch.storage.catalog import Catalog, PhotoUpdate
from imagesearch.storage.database import open_catalog_engine

MODEL = "ViT-B-32-256/datacomp_s34b_b86k"
PER_FOLDER = 1000
BATCH = 20_000


def fabricate(root: Path, n: int, dim: int, queries: int) -> tuple[Settings, np.ndarray,
                                                                   np.ndarray]:
    """The files, the settings and the catalog; returns (settings, base vectors, queries)."""
    photos = root / "photos"
    started = time.perf_counter()
    base, xq, _ = synthetic(n, queries, dim)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    print(f"vectors: {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    paths = []
    for i in range(n):
        folder = photos / f"{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"IMG_{i:07d}.jpg"
        with open(path, "wb") as f:
            f.write(b"\xff")
        paths.append(path)
    print(f"files: {time.perf_counter() - started:.1f} s", flush=True)
    settings = Settings(library_dir=root / "library", models_dir=root / "models",
                        model_id=MODEL, local_features="off", rerank="off")
    settings.library_dir.mkdir(parents=True)
    settings.save()
    started = time.perf_counter()
    catalog = Catalog(open_catalog_engine(settings.catalog_path))
    try:
        folder_id = catalog.add_folder(photos)
        for start in range(0, n, BATCH):
            updates = []
            for i in range(start, min(n, start + BATCH)):
                st = os.stat(paths[i])
                updates.append(PhotoUpdate(paths[i], folder_id, st.st_size, st.st_mtime,
                                           f"{i:032x}", 640, 480, "JPEG",
                                           vector=base[i]))
            catalog.store(MODEL, updates)
    finally:
        catalog.close()
    print(f"catalog: {time.perf_counter() - started:.1f} s", flush=True)
    return settings, base, xq


def rescan(settings: Settings) -> list[float]:
    from imagesearch.services.context import build_context

    times = []
    for _ in range(2):
        ctx = build_context(settings, save_delay_s=0.0, background=False)
        try:
            started = time.perf_counter()
            report = ctx.indexing.run()
            times.append(time.perf_counter() - started)
            assert report.added == report.updated == report.removed == 0, report
        finally:
            ctx.close()
    return times


def index_costs(settings: Settings) -> dict[str, float]:
    from imagesearch.services.vector_store import VectorStore
    from imagesearch.storage.catalog import Catalog

    catalog = Catalog(open_catalog_engine(settings.catalog_path))
    out: dict[str, float] = {}
    try:
        store = VectorStore(catalog, settings.index_dir, MODEL, save_delay_s=0,
                            background=False)
        started = time.perf_counter()
        index = store.index()
        out["rebuild_exact_s"] = time.perf_counter() - started
        assert index is not None
        started = time.perf_counter()
        store.upgrade_now()  # what a one-shot command that indexed does as it closes
        store.close()
        out["family_change_and_save_s"] = time.perf_counter() - started
        out["file_mb"] = store.path.stat().st_size / 2 ** 20
        again = VectorStore(catalog, settings.index_dir, MODEL, save_delay_s=0,
                            background=False)
        started = time.perf_counter()
        opened = again.index()
        out["open_from_files_s"] = time.perf_counter() - started
        assert opened is not None and again.last_rebuild_reason is None
        out["family"] = opened.family  # type: ignore[assignment]
        out["nprobe"] = opened.nprobe
        again.close()
    finally:
        catalog.close()
    return out


def query_costs(settings: Settings, base: np.ndarray, xq: np.ndarray, k: int = 60
                ) -> dict[str, float]:
    from imagesearch.core.vector_index import load_saved

    catalog = Catalog(open_catalog_engine(settings.catalog_path))
    index = load_saved(settings.index_dir / (MODEL.replace("/", "_") + ".faiss")).index
    times, searches, recalls = [], [], []
    try:
        ids_sorted = np.sort(catalog.vector_ids(MODEL))  # catalog ids in insertion order
        # The truth first, in one batch: BLAS threads still spinning from a product
        # computed between two searches would slow FAISS's own threads and the figure.
        exact = np.concatenate([ids_sorted[np.argpartition(-(xq[i:i + 20] @ base.T), 10,
                                                           axis=1)[:, :10]]
                                for i in range(0, len(xq), 20)])
        for q, truth in zip(xq, exact, strict=True):
            started = time.perf_counter()
            _, ids = index.search(q[None], k)
            searched = time.perf_counter()
            found = [int(i) for i in ids[0] if i >= 0]
            catalog.photos(found)
            times.append(time.perf_counter() - started)
            searches.append(searched - started)
            recalls.append(len(set(truth.tolist()) & set(found[:10])) / 10)
        # A search within one folder of 1,000 photos, the filter as the app applies it.
        folder = settings_folder(catalog)
        filtered = []
        for q in xq[:50]:
            started = time.perf_counter()
            index.search(q[None], k, catalog.ids_under(folder))
            filtered.append(time.perf_counter() - started)
    finally:
        catalog.close()
    times.sort()
    return {"search_p50_ms": 1000 * statistics.median(searches),
            "folder_of_1000_p50_ms": 1000 * statistics.median(filtered),
            "p50_ms": 1000 * statistics.median(times),
            "p95_ms": 1000 * times[int(0.95 * (len(times) - 1))],
            "recall_at_10": float(np.mean(recalls)), "queries": len(xq)}


def settings_folder(catalog: Catalog) -> Path:
    """The first subfolder of fabricated photos (1,000 of them)."""
    return catalog.folders()[0].path / "0000"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--dir", type=Path, help="where to build it (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="leave the library in place")
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="imagesearch-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        settings, base, xq = fabricate(root, args.photos, args.dim, args.queries)
        result: dict[str, object] = {"photos": args.photos, "dim": args.dim}
        result["rescan_cold_s"], result["rescan_warm_s"] = rescan(settings)
        result.update(index_costs(settings))
        result.update(query_costs(settings, base, xq))
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                          for k, v in result.items()}))
        if args.keep:
            print(f"kept: {settings.library_dir}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
