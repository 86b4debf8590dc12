"""A burst of new files into a watched folder: how long until every one is indexed, once.

    python bench/watch_burst.py                   # 10,000 64x64 JPEGs, tiny random model
    python bench/watch_burst.py --count 2000      # smaller burst
    python bench/watch_burst.py --model ViT-B-32-256/datacomp_s34b_b86k   # a real model

The JPEGs are encoded in memory first, then written into the watched folder as fast as the
disk allows, while FolderWatcher runs. It prints the seconds from the first write until the
catalog holds all of them, photos/s, how many update_paths batches that took, the longest
stall of a heartbeat thread (did anything freeze?), and checks each file was handed to
indexing exactly once and stored exactly once.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, load_encoder
from imagesearch.config import Settings
from imagesearch.domain import IndexReport, PhotoStatus
from imagesearch.services.context import build_context
from imagesearch.services.watching import FolderWatcher


def tiny_encoder(folder: Path) -> Any:
    from imagesearch.core.encoder import ClipEncoder
    from imagesearch.core.weights import WeightStore
    from tests.tiny_model import TINY_MODEL_ID, write_tiny_checkpoint

    checkpoint, config = write_tiny_checkpoint(folder / "tiny")
    store = WeightStore(folder / "models")
    store.install_file(TINY_MODEL_ID, checkpoint, config)
    return ClipEncoder.load(TINY_MODEL_ID, store, device="cpu", precision="fp32",
                            allow_download=False)


def jpeg_bytes(count: int, size: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = []
    for i in range(count):
        arr = base.copy()
        arr[0, :4] = np.frombuffer(i.to_bytes(12, "little"), np.uint8).reshape(4, 3)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


class Heartbeat(threading.Thread):
    """Wakes every 10 ms and records the worst lateness: a proxy for a frozen UI thread."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.worst = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            t = time.perf_counter()
            time.sleep(0.01)
            self.worst = max(self.worst, time.perf_counter() - t - 0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64, help="JPEG side in pixels")
    parser.add_argument("--model", help="a real model id (default: the tiny random model)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--decode-workers", type=int, default=0, help="0: automatic")
    parser.add_argument("--debounce", type=float, default=1.0)
    parser.add_argument("--per-folder", type=int, default=1000,
                        help="files per subfolder (a burst usually spans a few)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="imagesearch-watch-burst-") as tmp:
        base = Path(tmp)
        encoder = load_encoder(args.model)[0] if args.model else tiny_encoder(base)
        settings = Settings(library_dir=base / "library", models_dir=base / "models",
                            model_id=encoder.model_id, batch_size=args.batch_size,
                            decode_workers=args.decode_workers)
        ctx = build_context(settings, encoder=encoder)
        root = base / "watched"
        root.mkdir()
        ctx.library.add_folder(root)
        ctx.indexing.run()

        calls: list[list[Path]] = []
        real_update = ctx.indexing.update_paths

        def counting_update(paths: Iterable[Path], **kw: Any) -> IndexReport:
            batch = list(paths)
            calls.append(batch)
            result: IndexReport = real_update(batch, **kw)
            return result

        ctx.indexing.update_paths = counting_update  # type: ignore[method-assign]
        errors: list[Exception] = []
        watcher = FolderWatcher(ctx.indexing, ctx.library, debounce_s=args.debounce,
                                on_error=errors.append)
        blobs = jpeg_bytes(args.count, args.size)
        watcher.start()
        heartbeat = Heartbeat()
        heartbeat.start()
        started = time.perf_counter()
        for i, blob in enumerate(blobs):
            folder = root / f"import_{i // args.per_folder:03d}"
            if i % args.per_folder == 0:
                folder.mkdir()
            (folder / f"IMG_{i:05d}.jpg").write_bytes(blob)
        written = time.perf_counter() - started
        indexed = 0
        while time.perf_counter() - started < args.timeout:
            indexed = ctx.catalog.counts()[PhotoStatus.INDEXED]
            if indexed >= args.count:
                break
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        heartbeat.done.set()
        watcher.stop()

        handed = Counter(p for batch in calls for p in batch)
        ids = ctx.vectors.index().ids() if ctx.vectors.index() is not None else []
        counts = ctx.catalog.counts()
        once = (len(handed) == args.count and max(handed.values(), default=0) == 1
                and sum(counts.values()) == args.count and len(set(ids)) == len(ids)
                == args.count)
        emit({
            "bench": "watch_burst", "model": encoder.model_id, "count": args.count,
            "size": args.size, "batch_size": args.batch_size,
            "seconds_to_write": round(written, 2),
            "seconds_until_all_indexed": round(elapsed, 2),
            "photos_per_second": round(indexed / elapsed, 1),
            "update_paths_batches": len(calls),
            "largest_batch": max((len(c) for c in calls), default=0),
            "worst_heartbeat_stall_ms": round(heartbeat.worst * 1000, 1),
            "indexed": indexed, "failed": counts[PhotoStatus.FAILED],
            "each_indexed_exactly_once": once, "errors": [str(e) for e in errors],
        })
        ctx.close()
        return 0 if once and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
