"""Opening the search index: read into memory, or read in place from its memory map.

Run: ``python bench/index_open.py --library DIR`` on a library with a saved index, for
example one that ``python bench/scale.py --photos 1000000 --keep --dir D`` left in
``D/library``.

Each way runs in a fresh process of its own, one after the other, with the file in the
page cache (a first untimed read puts it there): what a command-line search or the
app's start pays. Per way:
- open: ``load_saved`` (the base and its delta log), and the private memory it adds
  (RssAnon; a mapped file's pages are the page cache's, shared, and counted in RssFile);
- the store's whole open (``VectorStore.index()``: the file, then the checks against
  the catalog that guard against a stale or foreign file), in another fresh process;
- queries: the first one, then the p50 of 200 (top 60, one at a time);
- a change of 1,000 photos (500 replaced, 500 new) applied, and the p50 of the same
  queries on top of it (in place: searched through the overlay as well);
- a whole base written from that state (``snapshot``, what a save that folds the log
  does) and the private memory at its peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.asmk_scale import memory
from bench.scale import MODEL

WAYS = {"in memory": False, "in place": True}


def child(library: Path, way: str, whole_store: bool) -> dict[str, float]:
    from imagesearch.core import vector_index
    from imagesearch.core.index_file import Change
    from imagesearch.core.native_libs import faiss_module
    from imagesearch.services.vector_store import index_path

    vector_index.MAP_FILES = WAYS[way]
    faiss_module()  # FAISS and its libraries loaded before memory is read
    path = index_path(library / "index", MODEL)
    before = memory()
    if whole_store:
        from imagesearch.config import Settings
        from imagesearch.services.vector_store import VectorStore
        from imagesearch.storage.catalog import Catalog
        from imagesearch.storage.database import open_catalog_engine

        settings = Settings.load(library)
        catalog = Catalog(open_catalog_engine(settings.catalog_path))
        store = VectorStore(catalog, settings.index_dir, MODEL, save_delay_s=0,
                            background=False)
        started = time.perf_counter()
        opened = store.index()
        elapsed = time.perf_counter() - started
        assert opened is not None and store.last_rebuild_reason is None, \
            store.last_rebuild_reason
        return {"store_open_s": elapsed,
                "store_private_mb": memory()["RssAnon"] - before["RssAnon"]}
    started = time.perf_counter()
    index = vector_index.load_saved(path).index
    opened_s = time.perf_counter() - started
    after_open = memory()
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(201, index.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    started = time.perf_counter()
    index.search(queries[:1], 60)
    first_ms = 1000 * (time.perf_counter() - started)

    def p50() -> float:
        times = []
        for q in queries[1:]:
            started = time.perf_counter()
            index.search(q[None], 60)
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times)

    query_ms = p50()
    ids = index.ids()
    replaced = rng.choice(ids, 500, replace=False)
    new = np.arange(ids.max() + 1, ids.max() + 501)
    added = np.concatenate([replaced, new]).astype(np.int64)
    vectors = rng.normal(size=(len(added), index.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    started = time.perf_counter()
    index.apply(Change(index.generation, index.generation + 1, np.zeros(0, np.int64),
                       added, vectors))
    change_ms = 1000 * (time.perf_counter() - started)
    changed_query_ms = p50()
    peak = [memory()["RssAnon"]]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], memory()["RssAnon"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    _, blob = index.snapshot()
    snapshot_s = time.perf_counter() - started
    done.set()
    sampler.join()
    del blob
    return {"open_s": opened_s, "private_open_mb": after_open["RssAnon"] - before["RssAnon"],
            "file_mapped_mb": after_open["RssFile"] - before["RssFile"],
            "first_query_ms": first_ms, "query_p50_ms": query_ms,
            "change_of_1000_ms": change_ms, "query_p50_after_change_ms": changed_query_ms,
            "snapshot_s": snapshot_s,
            "snapshot_peak_private_mb": peak[0] - before["RssAnon"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, required=True)
    parser.add_argument("--child", choices=list(WAYS), help=argparse.SUPPRESS)
    parser.add_argument("--store", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.library, args.child, args.store)))
        return
    from imagesearch.services.vector_store import index_path

    path = index_path(args.library / "index", MODEL)
    with open(path, "rb") as f:  # into the page cache, as for any recent use
        while f.read(1 << 24):
            pass
    print(f"{path} ({path.stat().st_size / 2 ** 20:.0f} MB)")
    rows = {}
    for way in WAYS:
        run = [sys.executable, __file__, "--library", str(args.library), "--child", way]
        found = json.loads(subprocess.check_output(run, text=True).splitlines()[-1])
        found.update(json.loads(subprocess.check_output([*run, "--store"], text=True)
                                .splitlines()[-1]))
        rows[way] = found
        print(way, json.dumps({k: round(v, 3) for k, v in found.items()}), flush=True)
    a, b = rows["in memory"], rows["in place"]
    print(f"open: {a['open_s']:.2f} s -> {b['open_s']:.2f} s "
          f"({a['open_s'] / max(b['open_s'], 1e-9):.0f}x), private "
          f"{a['private_open_mb']:.0f} -> {b['private_open_mb']:.0f} MB; the store's whole "
          f"open {a['store_open_s']:.2f} -> {b['store_open_s']:.2f} s")


if __name__ == "__main__":
    main()
