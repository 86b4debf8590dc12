"""The library panel: first run, adding and removing folders, watching, progress, failures."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent

if TYPE_CHECKING:
    from tests.gui_fixtures import GuiDriver, WindowFactory

pytest_plugins = ["tests.gui_fixtures"]


def drop_folder(widget: Any, folder: Path) -> None:
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(folder))])
    enter = QDragEnterEvent(QPoint(3, 3), Qt.DropAction.CopyAction, data,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    widget.dragEnterEvent(enter)
    assert enter.isAccepted()
    widget.dropEvent(QDropEvent(QPointF(3, 3), Qt.DropAction.CopyAction, data,
                                Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier))


def test_first_run_says_add_a_folder_then_indexes_a_dropped_one(
        qtbot: Any, gui: GuiDriver, make_window: WindowFactory, photo_dir: Path) -> None:
    window = make_window()
    empty = window.results.empty
    assert empty.title.text() == "Add a folder of photos to start"
    assert empty.button.isVisible() and empty.button.text() == "Add folder…"
    assert not window.model_setup.isVisible()  # the weights are there
    assert window.status.photos.text() == "0 photos indexed"
    assert window.status.last.text() == "Last indexed: never"

    drop_folder(window.library_panel, photo_dir)
    gui.wait_indexed(window, 6)
    panel = window.library_panel
    qtbot.waitUntil(lambda: panel.folders.topLevelItemCount() == 1)
    item = panel.folders.topLevelItem(0)
    assert item.text(0) == "photos" and item.text(1) == "6"
    assert item.checkState(2) == Qt.CheckState.Checked
    assert window.status.photos.text() == "6 photos indexed"
    assert window.status.model.text() == "Model: ISTiny-ViT/random"
    assert window.status.device.text() == "Device: cpu"
    assert window.status.last.text().startswith("Last indexed: today")
    assert "6 new" in window.status.currentMessage()
    assert empty.title.text() == "Search your photos"
    assert not panel.progress_box.isVisible()


def test_folders_that_cannot_be_added_are_explained(qtbot: Any, make_window: WindowFactory,
                                                    tmp_path: Path) -> None:
    window = make_window()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    window.library.add_folders([tmp_path / "missing", a_file])
    panel = window.library_panel
    qtbot.waitUntil(lambda: panel.notice.isVisible())
    assert "does not exist" in panel.notice.text()
    assert "is not a folder" in panel.notice.text()
    assert panel.folders.topLevelItemCount() == 0
    assert window.library.ctx is not None and window.library.ctx.library.folders() == []


def test_unreadable_photos_are_listed_with_their_reasons(
        qtbot: Any, gui: GuiDriver, make_window: WindowFactory, photo_dir: Path) -> None:
    (photo_dir / "broken.jpg").write_bytes(b"this is no jpeg")
    (photo_dir / "empty.png").write_bytes(b"")
    window = make_window()
    window.library.add_folders([photo_dir])
    gui.wait_indexed(window, 6)
    panel = window.library_panel
    qtbot.waitUntil(lambda: panel.failures.topLevelItemCount() == 2)
    assert panel.failures_box.isVisible()
    reasons = {panel.failures.topLevelItem(i).text(0): panel.failures.topLevelItem(i).text(1)
               for i in range(2)}
    assert "not an image" in reasons["broken.jpg"]
    assert "empty" in reasons["empty.png"]
    assert "2 failed" in window.status.photos.text()


def test_offline_folder_keeps_its_photos(qtbot: Any, gui: GuiDriver,
                                         photo_dir: Path) -> None:
    window = gui.indexed(photo_dir)
    photo_dir.rename(photo_dir.with_name("unplugged"))
    qtbot.mouseClick(window.library_panel.index_button, Qt.MouseButton.LeftButton)
    panel = window.library_panel
    qtbot.waitUntil(lambda: "(offline)" in panel.folders.topLevelItem(0).text(0),
                    timeout=20_000)
    assert "offline" in window.status.currentMessage()
    assert window.library.status is not None and window.library.status.indexed_count == 6


def test_watch_toggle_and_remove(qtbot: Any, gui: GuiDriver,
                                 photo_dir: Path) -> None:
    window = gui.indexed(photo_dir)
    ctx = window.library.ctx
    assert ctx is not None
    panel = window.library_panel
    panel.folders.topLevelItem(0).setCheckState(2, Qt.CheckState.Unchecked)
    qtbot.waitUntil(lambda: not ctx.library.folders()[0].watched)
    qtbot.waitUntil(lambda: window.library.folders and not window.library.folders[0].watched)
    assert panel.folders.topLevelItem(0).checkState(2) == Qt.CheckState.Unchecked

    panel.folders.topLevelItem(0).setSelected(True)
    assert panel.remove_button.isEnabled()
    qtbot.mouseClick(panel.remove_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: panel.folders.topLevelItemCount() == 0)
    assert ctx.library.status().photo_count == 0
    assert window.results.empty.title.text() == "Add a folder of photos to start"


def test_indexing_pauses_and_cancels(qtbot: Any, make_window: WindowFactory,
                                     tmp_path: Path) -> None:
    folder = tmp_path / "lots"
    folder.mkdir()
    for i in range(48):
        Image.new("RGB", (64, 48), (i * 5, 255 - i * 5, 90)).save(folder / f"p{i:02d}.png")
    window = make_window()  # batches of 8 (make_settings)
    panel = window.library_panel
    reports: list[Any] = []
    window.indexer.progress.connect(reports.append)
    window.library.add_folders([folder])
    qtbot.waitUntil(lambda: window.indexer.running, timeout=20_000)
    panel.pause_button.click()
    assert window.indexer.paused and panel.pause_button.text() == "Resume"
    qtbot.waitUntil(lambda: any(r.phase == "embedding" for r in reports), timeout=30_000)
    seen = len(reports)
    time.sleep(1.0)
    qtbot.wait(200)
    assert len(reports) == seen, "indexing went on while paused"
    assert window.indexer.running and reports[-1].done < 48
    assert "paused" in panel.progress_label.text()

    finished: list[Any] = []
    window.indexer.finished.connect(finished.append)
    qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(finished), timeout=30_000)
    assert finished[0].cancelled
    assert "cancelled" in window.status.currentMessage()
    assert not panel.progress_box.isVisible()
    qtbot.waitUntil(lambda: window.library.status is not None
                    and window.library.status.indexed_count < 48)


def test_watched_folders_follow_changes_live(qtbot: Any, gui: GuiDriver, photo_dir: Path,
                                             write_photo: Any) -> None:
    window = gui.indexed(photo_dir)
    watch = window.library.watch
    qtbot.waitUntil(lambda: watch.running and watch.watcher is not None
                    and watch.watcher.watched_paths() == [photo_dir], timeout=20_000)
    write_photo(photo_dir / "new" / "coins.jpg", "coins")
    gui.wait_indexed(window, 7)
    assert "Folder changes: 1 new" in window.status.currentMessage()

    # Watching off: the flag is stored and the watcher lets go of the folder.
    window.library_panel.folders.topLevelItem(0).setCheckState(2, Qt.CheckState.Unchecked)
    qtbot.waitUntil(lambda: watch.watcher is not None and watch.watcher.watched_paths() == [],
                    timeout=20_000)
    write_photo(photo_dir / "astronaut2.jpg", "astronaut")
    qtbot.wait(2500)  # longer than the watcher's debounce and settle time
    status = window.library.ctx.library.status()  # type: ignore[union-attr]
    assert status.photo_count == 7


def test_large_counts_are_grouped_and_the_index_is_described(qtbot: Any) -> None:
    """A library of a million photos reads "1,000,000" (the user's grouping), and the
    count's tooltip names the search index."""
    import re

    from imagesearch.domain import LibraryStatus
    from imagesearch.gui.status import StatusBar

    bar = StatusBar()
    qtbot.addWidget(bar)
    bar.set_status(LibraryStatus(Path("/lib"), "m", "cpu", 1_234_567, 1_234_567, 0, 0,
                                 search_index="approximate search over 1,234,567 photos",
                                 storage="compact (128-byte vector codes)"))
    assert re.fullmatch(r"1\D234\D567 photos indexed", bar.photos.text())
    assert bar.photos.toolTip() == ("Search index: approximate search over 1,234,567 "
                                    "photos\nStorage: compact (128-byte vector codes)")
