"""Scrolling the results grid: how busy the GUI thread is, frame by frame, with 10,000
results (the most a query shows).

The grid holds one query's results, not the catalog: its cost depends on how many
results there are and how fast their thumbnails arrive, not on the library's size (the
catalog is counted on a worker thread: bench/gui_startup.py). This bench fabricates that
many photos (distinct JPEGs, so every tile needs its own thumbnail), fills the app's own
grid (ResultsModel, ResultsGrid, ThumbnailLoader on the app's thread pools, the disk
cache) with them, a third carrying a match box, and scrolls it at 60 frames a second:

- ``wheel``: a fast, steady scroll down, three wheel notches a frame (about 4,300
  pixels a second), with the thumbnails made as the grid asks for them (cold cache);
- ``wheel, cached``: the same again from the top, the thumbnails now made (the last
  800 still in memory, all of them in the disk cache);
- ``jumps``: the scroll bar dragged to a random place ten times a second.

A frame's cost is the GUI thread's busy time in it: the scroll and the synchronous
repaint, plus the events handled before the next frame is due (thumbnails turned into
pixmaps, the tiles they land on painted again). Over 16.7 ms, the frame is late.

    python bench/grid_scroll.py [--results 10000] [--seconds 6]

Offscreen unless QT_QPA_PLATFORM says otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FRAME_S = 1 / 60
WIDTH, HEIGHT = 1280, 800  # the main window's first size


def make_photos(folder: Path, count: int) -> list[Path]:
    """``count`` distinct 480 x 360 JPEGs (a coloured gradient and noise each)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:360, 0:480].astype(np.float32)
    paths = []
    for i in range(count):
        r, g, b = rng.random(3)
        pixels = np.stack([x / 480 * 255 * r, y / 360 * 255 * g,
                           (x + y) / 840 * 255 * b], axis=2)
        pixels += rng.normal(0, 12, pixels.shape)
        path = folder / f"{i // 1000:02d}" / f"photo-{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=80)
        paths.append(path)
    return paths


def hits_for(paths: list[Path]) -> list:  # type: ignore[type-arg]
    from imagesearch.domain import Box, SearchHit

    hits = []
    for i, path in enumerate(paths):
        stat = path.stat()
        box = Box(120.0, 90.0, 300.0, 250.0) if i % 3 == 0 else None
        hits.append(SearchHit(i + 1, path, 1.0 - i / len(paths), 480, 360, stat.st_size,
                              None, stat.st_mtime, box, None, 12.0 if box else None))
    return hits


def visible_rows(grid) -> set[int]:  # type: ignore[no-untyped-def]
    """Rows with a tile on screen (probed at every cell's centre, half rows apart)."""
    from PySide6.QtCore import QPoint

    viewport, cell = grid.viewport().rect(), grid.gridSize()
    rows = set()
    for y in range(1, viewport.height(), max(1, cell.height() // 2)):
        for x in range(cell.width() // 2, viewport.width(), max(1, cell.width())):
            row = grid.indexAt(QPoint(x, y)).row()
            if row >= 0:
                rows.add(row)
    return rows


def scroll(app, grid, model, positions: list[int]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Show each scroll position for one frame; the GUI thread's busy time per frame and
    the share of tiles on screen that had their thumbnail when painted."""
    from PySide6.QtCore import QEventLoop, Qt

    bar = grid.verticalScrollBar()
    busy: list[float] = []
    filled: list[float] = []
    due = time.perf_counter()
    for value in positions:
        start = time.perf_counter()
        bar.setValue(value)
        grid.viewport().repaint()
        spent = time.perf_counter() - start
        rows = visible_rows(grid)
        if len(rows):
            have = sum(model.data(model.index(r), Qt.ItemDataRole.DecorationRole) is not None
                       for r in rows)
            filled.append(have / len(rows))
        due += FRAME_S
        while (now := time.perf_counter()) < due:  # events until the next frame is due
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 2)
            spent += time.perf_counter() - now
            time.sleep(0.0005)
        busy.append(spent * 1000)
    busy.sort()
    return {"frames": len(busy), "p50": statistics.median(busy),
            "p95": busy[int(0.95 * (len(busy) - 1))], "p99": busy[int(0.99 * (len(busy) - 1))],
            "max": busy[-1], "late": sum(b > FRAME_S * 1000 for b in busy) / len(busy),
            "filled": statistics.fmean(filled) if filled else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=6.0, help="of each steady scroll")
    args = ap.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from PySide6.QtWidgets import QApplication

    from imagesearch.config import Settings
    from imagesearch.gui.results_model import ResultsModel
    from imagesearch.gui.results_view import ResultsGrid
    from imagesearch.gui.thumbnails import ThumbnailLoader
    from imagesearch.gui.workers import TaskRunner
    from imagesearch.services.thumbnails import ThumbnailCache

    with tempfile.TemporaryDirectory(prefix="grid-scroll-") as tmp:
        start = time.perf_counter()
        paths = make_photos(Path(tmp) / "photos", args.results)
        print(f"{args.results:,} photos made in {time.perf_counter() - start:.0f} s")
        app = QApplication.instance() or QApplication([])
        runner = TaskRunner()
        loader = ThumbnailLoader(runner, ThumbnailCache(Path(tmp) / "thumbnails"))
        model = ResultsModel(loader, Settings().thumbnail_size)
        grid = ResultsGrid(model)
        grid.resize(WIDTH, HEIGHT)
        grid.set_thumb_size(model.thumb_size)
        grid.show()
        app.processEvents()
        hits = hits_for(paths)
        start = time.perf_counter()
        model.set_hits(hits)
        grid.viewport().repaint()
        shown = time.perf_counter() - start
        bar = grid.verticalScrollBar()
        step = 3 * bar.singleStep()
        frames = int(args.seconds / FRAME_S)
        wheel = [min(bar.maximum(), step * (i + 1)) for i in range(frames)]
        rng = np.random.default_rng(1)
        jumps = [int(v) for v in rng.integers(0, bar.maximum() + 1, int(args.seconds * 10))
                 for _ in range(6)]  # each place held for 6 frames (0.1 s)
        results = {"wheel": scroll(app, grid, model, wheel)}
        bar.setValue(0)
        results["wheel, cached"] = scroll(app, grid, model, wheel)
        results["jumps"] = scroll(app, grid, model, jumps)
        runner.shutdown()
    print(f"grid {WIDTH} x {HEIGHT}, {args.results:,} results set and painted in "
          f"{shown * 1000:.0f} ms; scroll range {bar.maximum():,} px")
    print(f"{'scroll':<15} {'frames':>6} {'busy p50':>9} {'p95':>6} {'p99':>6} {'max':>6} "
          f"{'late':>6} {'tiles with thumbnail':>21}")
    for name, r in results.items():
        print(f"{name:<15} {r['frames']:>6.0f} {r['p50']:>7.1f}ms {r['p95']:>6.1f} "
              f"{r['p99']:>6.1f} {r['max']:>6.1f} {r['late']:>6.1%} {r['filled']:>21.0%}")


if __name__ == "__main__":
    main()
