"""The results grid: thousands of tiles, thumbnails from the disk cache, match boxes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QImage

from imagesearch.domain import Box, SearchHit
from imagesearch.gui.theme import box_pen_color
from imagesearch.services.thumbnails import ThumbnailCache

MANY = 10_000

if TYPE_CHECKING:
    from tests.gui_fixtures import WindowFactory

pytest_plugins = ["tests.gui_fixtures"]


@pytest.fixture
def many_photos(tmp_path: Path) -> list[Path]:
    """10,000 distinct paths (hard links to one small JPEG: quick to make, real to decode)."""
    folder = tmp_path / "many"
    folder.mkdir()
    source = folder / "source.jpg"
    Image.new("RGB", (96, 64), (40, 120, 200)).save(source)
    paths = []
    for i in range(MANY):
        p = folder / f"photo{i:05d}.jpg"
        os.link(source, p)
        paths.append(p)
    return paths


def hits_for(paths: list[Path], box: Box | None = None) -> list[SearchHit]:
    return [SearchHit(photo_id=i + 1, path=p, score=1.0 - i / len(paths), width=200,
                      height=200, mtime=p.stat().st_mtime, box=box)
            for i, p in enumerate(paths)]


def loaded(window: Any) -> int:
    return len(window.thumbs._pixmaps)


def test_ten_thousand_results_load_only_what_is_visible(
        qtbot: Any, make_window: WindowFactory, many_photos: list[Path]) -> None:
    window = make_window()
    window.resize(1200, 800)
    window._show_results(1, hits_for(many_photos), "many")
    assert window.model.rowCount() == MANY
    grid = window.grid
    qtbot.waitUntil(lambda: loaded(window) > 0, timeout=20_000)
    assert grid.visualRect(window.model.index(0)).intersects(grid.viewport().rect())
    # Only the tiles on screen (and nothing like all ten thousand) were asked for.
    thumbs = window.settings.thumbnails_dir
    qtbot.waitUntil(lambda: not window.thumbs._pending, timeout=20_000)
    made = [p for p in thumbs.rglob("*") if p.is_file()]
    assert 0 < len(made) < 200
    assert not [p for p in made if p.suffix == ".part"]  # atomic writes leave no debris

    # Keyboard to the end: the grid follows, and the last tiles' thumbnails arrive.
    grid.setFocus()
    qtbot.keyClick(grid, Qt.Key.Key_End)
    assert grid.currentIndex().row() == MANY - 1
    assert window.preview.hit == window.model.hit(MANY - 1)
    last = window.model.hit(MANY - 1)
    assert last is not None
    key = (last.path, last.mtime, window.settings.thumbnail_size)
    qtbot.waitUntil(lambda: key in window.thumbs._pixmaps, timeout=20_000)
    assert grid.visualRect(grid.currentIndex()).intersects(grid.viewport().rect())
    assert len([p for p in thumbs.rglob("*.jpg")]) < 400


def count_color(image: QImage, color: QColor, tolerance: int = 40) -> int:
    n = 0
    for y in range(0, image.height()):
        for x in range(0, image.width()):
            c = image.pixelColor(x, y)
            if (abs(c.red() - color.red()) + abs(c.green() - color.green())
                    + abs(c.blue() - color.blue())) < tolerance:
                n += 1
    return n


def test_match_box_is_drawn_only_when_present(qtbot: Any, make_window: WindowFactory,
                                              tmp_path: Path) -> None:
    gray = tmp_path / "gray.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(gray)
    window = make_window()
    box = Box(50, 50, 150, 150)  # pixels of the 200 x 200 photo
    for with_box in (True, False):
        window.model.set_hits([])
        window._show_results(1, hits_for([gray], box if with_box else None), "gray")
        hit = window.model.hit(0)
        assert hit is not None
        key = (gray, hit.mtime, window.settings.thumbnail_size)
        qtbot.waitUntil(lambda k=key: k in window.thumbs._pixmaps, timeout=20_000)
        window.grid.clearSelection()
        tile = window.grid.viewport().grab(window.grid.visualRect(window.model.index(0)))
        found = count_color(tile.toImage(), box_pen_color())
        # The box's outline is ~4 × 96 px long at the default tile size.
        assert (found > 200) == with_box, found
        qtbot.waitUntil(lambda: window.preview.view.image_rect() is not None, timeout=20_000)
        preview = window.preview.view.grab().toImage()
        assert (count_color(preview, box_pen_color()) > 100) == with_box


def test_tile_shows_name_and_score_tooltip(qtbot: Any, make_window: WindowFactory,
                                           tmp_path: Path) -> None:
    photo = tmp_path / "beach day.png"
    Image.new("RGB", (50, 50), (200, 180, 120)).save(photo)
    window = make_window()
    window._show_results(1, [SearchHit(7, photo, 0.4321, mtime=photo.stat().st_mtime)], "x")
    index = window.model.index(0)
    assert index.data(Qt.ItemDataRole.DisplayRole) == "beach day.png"
    assert "0.432" in index.data(Qt.ItemDataRole.ToolTipRole)


def test_thumbnail_cache_is_keyed_by_mtime(tmp_path: Path) -> None:
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (400, 300), (10, 200, 30)).save(photo)
    cache = ThumbnailCache(tmp_path / "thumbs")
    first = cache.get(photo, photo.stat().st_mtime, 128)
    with Image.open(first) as img:
        assert max(img.size) == 128 and img.size == (128, 96)
    made = first.stat().st_ino  # (its mtime records when it was last used)
    assert cache.get(photo, photo.stat().st_mtime, 128) == first
    assert first.stat().st_ino == made  # served from disk, not remade
    os.utime(photo, (1_000_000, 1_000_000))
    second = cache.get(photo, None, 128)
    assert second != first and second.is_file()
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="not an image"):
        cache.get(tmp_path / "bad.jpg", None, 128)
    assert not list((tmp_path / "thumbs").rglob("*.part"))


def test_a_thumbnail_for_a_tile_that_left_the_screen_is_not_made(
        qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagesearch.gui import thumbnails
    from imagesearch.gui.thumbnails import ThumbnailLoader

    class Queue:
        """A runner that keeps the work until the test runs it."""

        def __init__(self) -> None:
            self.work: list[tuple[Any, Any, Any]] = []

        def submit(self, pool: str, fn: Any, *, done: Any, error: Any,
                   priority: int = 0) -> None:
            self.work.append((fn, done, error))

        def run(self) -> None:
            work, self.work = self.work, []
            for fn, done, _ in work:
                done(fn())

    photos = []
    for name in ("a", "b"):
        Image.new("RGB", (96, 64), (200, 40, 40)).save(tmp_path / f"{name}.jpg")
        photos.append((tmp_path / f"{name}.jpg", None, 64))
    clock = [100.0]
    monkeypatch.setattr(thumbnails.time, "monotonic", lambda: clock[0])
    queue = Queue()
    loader = ThumbnailLoader(queue, ThumbnailCache(tmp_path / "thumbs"))  # type: ignore[arg-type]
    announced: list[Any] = []
    loader.ready.connect(announced.append)
    a, b = photos
    assert loader.pixmap(a) is None  # painted: its thumbnail is asked for
    clock[0] += 1.0  # the grid scrolled on: b is painted, a is not any more
    assert loader.pixmap(b) is None
    queue.run()
    assert loader.pixmap(b) is not None
    assert loader._pixmaps.keys() == {b}  # a was skipped, not made
    assert len(list((tmp_path / "thumbs").rglob("*.jpg"))) == 1
    assert a in announced  # so a tile still on screen repaints, and asks again
    assert loader.pixmap(a) is None and len(queue.work) == 1  # asked again: queued again
    queue.run()
    assert loader.pixmap(a) is not None


def test_a_thumbnail_that_cannot_become_a_pixmap_says_so(
        qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PySide6.QtGui import QPixmap

    from imagesearch.gui import thumbnails
    from imagesearch.gui.thumbnails import ThumbnailLoader

    class Now:
        def submit(self, pool: str, fn: Any, *, done: Any, error: Any,
                   priority: int = 0) -> None:
            done(fn())

    Image.new("RGB", (96, 64), (200, 40, 40)).save(tmp_path / "a.jpg")
    key = (tmp_path / "a.jpg", None, 64)
    monkeypatch.setattr(thumbnails.QPixmap, "fromImage", lambda image: QPixmap())
    loader = ThumbnailLoader(Now(), ThumbnailCache(tmp_path / "thumbs"))  # type: ignore[arg-type]
    failed: list[Any] = []
    loader.failed.connect(lambda k, reason: failed.append((k, reason)))
    assert loader.pixmap(key) is None
    assert failed == [(key, "cannot display the thumbnail")]
    assert loader.error(key) == "cannot display the thumbnail"  # the tile: "cannot show"
    assert loader.pixmap(key) is None and not loader._pixmaps  # not asked for again


def test_preview_dates_a_photo_without_a_date_taken_by_its_file(
        qtbot: Any, make_window: WindowFactory, tmp_path: Path) -> None:
    from datetime import datetime

    photo = tmp_path / "scan.png"
    Image.new("RGB", (40, 30), (90, 90, 90)).save(photo)
    changed = datetime(2024, 3, 9, 14, 5).timestamp()
    taken = datetime(2019, 7, 1, 8, 30)
    window = make_window()
    shown = []
    for hit in (SearchHit(1, photo, 0.5, mtime=changed),
                SearchHit(2, photo, 0.5, captured_at=taken, mtime=changed),
                SearchHit(3, photo, 0.5), SearchHit(4, photo, 0.5, mtime=0.0)):
        window.preview.show_hit(hit)
        shown.append((window.preview.date.text(), window.preview.date.toolTip()))
    assert shown[0][0] == "2024-03-09 14:05 (file modified)"
    assert "no date taken" in shown[0][1]
    assert shown[1] == ("2019-07-01 08:30", "When the photo was taken")
    assert shown[2] == shown[3] == ("unknown", "")
