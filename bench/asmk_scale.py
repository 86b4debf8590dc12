"""The weight-free shortlist (ASMK) at scale: building, memory, files, queries and saves.

Fabricates the ASMK signatures of N photos (no SIFT and no vocabulary learning, which
cost the same per photo at any size): 220 distinct words a photo, as the compact mode's
225 keypoints give on the instance benchmark, drawn with a Zipf-like skew over 32,768
words (real words are far from equally common), and random 128-bit codes. They go through
the app's own InvertedFile: added in batches as a refresh adds them (merging as it goes),
saved, then opened in a fresh process that answers queries of 1,500 keypoints (the app's
query), and takes one small change (100 photos re-added, 100 removed) and saves it.

Memory is read from /proc: "private" is the process's anonymous memory (RssAnon),
"mapped" the index file's pages it has touched (RssFile), which the kernel can drop.

    python bench/asmk_scale.py --photos 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

WORDS = 32768
PER_PHOTO = 220


def memory() -> dict[str, float]:
    """RssAnon and RssFile of this process, MB (Linux)."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            found[key] = int(value.split()[0]) / 1024
    return found


def vocabulary_for_bench():  # type: ignore[no-untyped-def]
    from imagesearch.core.local_index import Vocabulary
    rng = np.random.default_rng(1)
    centres = np.abs(rng.standard_normal((WORDS, 128))).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return Vocabulary(centres.astype(np.float16).astype(np.float32))


def word_weights() -> np.ndarray:
    p = 1.0 / np.arange(1, WORDS + 1) ** 0.7
    return p / p.sum()


def signatures(first: int, count: int, seed: int):  # type: ignore[no-untyped-def]
    from imagesearch.core.local_index import Aggregated
    rng = np.random.default_rng(seed)
    p = word_weights()
    out = []
    for pid in range(first, first + count):
        words = np.unique(rng.choice(WORDS, PER_PHOTO + 20, p=p))[:PER_PHOTO]
        codes = rng.integers(0, 2 ** 63, (len(words), 2), dtype=np.int64).astype(np.uint64)
        out.append((pid, Aggregated(words.astype(np.int64), codes), f"{pid:032x}"))
    return out


def build(photos: int, folder: Path) -> dict[str, float]:
    from imagesearch.core.local_index import InvertedFile
    inverted = InvertedFile(vocabulary_for_bench(), photos, spill_dir=folder)
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:  # the peak of private memory (the kernel keeps none)
        while not done.wait(0.05):
            peak[0] = max(peak[0], memory()["RssAnon"])

    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    for first in range(0, photos, 2000):
        inverted.add_aggregated_many(signatures(first, min(2000, photos - first), first))
    added = time.perf_counter() - start
    inverted.save(folder / "local.asmk", "bench")
    total = time.perf_counter() - start
    done.set()
    return {"add_s": added, "build_s": total, "peak_private_mb": peak[0]}


def serve(folder: Path, photos: int) -> dict[str, float]:
    from imagesearch.core.local_features import LocalFeatures
    from imagesearch.core.local_index import InvertedFile
    vocabulary_for_bench()  # FAISS and its libraries loaded before memory is read
    before = memory()
    start = time.perf_counter()
    inverted = InvertedFile.load(folder / "local.asmk", "bench", folder)
    opened = time.perf_counter() - start
    after_open = memory()
    rng = np.random.default_rng(7)
    centres = inverted.vocabulary.centroids
    p = word_weights()
    times = []
    for q in range(12):
        # A query: 1,500 keypoints near words drawn like the photos' (the first three
        # queries warm the mapped pages and are not counted).
        d = centres[rng.choice(WORDS, 1500, p=p)] \
            + 0.02 * rng.standard_normal((1500, 128)).astype(np.float32)
        features = LocalFeatures(d.astype(np.float32), np.zeros((1500, 2), np.float32),
                                 np.ones(1500, np.float32), np.zeros(1500, np.float32),
                                 100, 100)
        t = time.perf_counter()
        inverted.search(features, 100)
        if q >= 3:
            times.append(time.perf_counter() - t)
    after_queries = memory()
    journal = folder / "local.asmk.journal"
    before_bytes = journal.stat().st_size
    t = time.perf_counter()
    inverted.add_aggregated_many(signatures(0, 100, 10 ** 9))
    inverted.remove(range(photos - 100, photos))
    inverted.save(folder / "local.asmk", "bench")
    change = time.perf_counter() - t
    return {"open_s": opened, "query_p50_ms": 1000 * statistics.median(times),
            "private_open_mb": after_open["RssAnon"] - before["RssAnon"],
            "private_mb": after_queries["RssAnon"] - before["RssAnon"],
            "mapped_mb": after_queries["RssFile"] - before["RssFile"],
            "change_save_s": change,
            "journal_appended_kb": (journal.stat().st_size - before_bytes) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=100_000)
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the fresh process
    args = ap.parse_args()
    if args.serve:
        print(json.dumps(serve(args.serve, args.photos)))
        return
    with tempfile.TemporaryDirectory(prefix="asmk-scale-") as tmp:
        folder = Path(tmp)
        built = build(args.photos, folder)
        size = (folder / "local.asmk").stat().st_size
        out = subprocess.run([sys.executable, __file__, "--photos", str(args.photos),
                              "--serve", str(folder)], capture_output=True, text=True,
                             check=True)
        served = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.photos:,} photos, {PER_PHOTO} words each, {WORDS:,}-word vocabulary")
    print(f"  build (add + merges + save): {built['build_s']:.1f} s "
          f"(adding {built['add_s']:.1f} s), peak private memory "
          f"{built['peak_private_mb']:.0f} MB")
    print(f"  file: {size / 2 ** 20:.0f} MB, {size / args.photos:,.0f} B a photo")
    print(f"  open in a fresh process: {served['open_s']:.2f} s, "
          f"{served['private_open_mb']:.0f} MB private")
    print(f"  query (1,500 keypoints, as is and mirrored) p50: "
          f"{served['query_p50_ms']:.0f} ms")
    print(f"  after the queries: {served['private_mb']:.0f} MB private, "
          f"{served['mapped_mb']:.0f} MB of the file mapped")
    print(f"  100 photos re-added and 100 removed, then saved: "
          f"{served['change_save_s']:.2f} s, {served['journal_appended_kb']:.0f} KB "
          f"appended to the journal")


if __name__ == "__main__":
    main()
