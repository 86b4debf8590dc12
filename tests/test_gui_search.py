"""Searching from the window: typed text, dropped files and image data, paste, more like this."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication, QImage
from PySide6.QtWidgets import QApplication

from imagesearch.domain import Query

if TYPE_CHECKING:
    from tests.gui_fixtures import GuiDriver, WindowFactory

pytest_plugins = ["tests.gui_fixtures"]


def drop(widget: Any, data: QMimeData) -> None:
    """Enter and drop, the way a drag from a file manager or browser ends.

    Qt delivers drop events only inside a real drag session, so the handlers are called
    directly; the drag must be accepted before the drop counts.
    """
    pos = QPointF(5, 5)
    # QDragEnterEvent takes whole pixels (PySide6 before 6.12 accepts nothing else).
    enter = QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, data,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    widget.dragEnterEvent(enter)
    assert enter.isAccepted(), "the drag was refused"
    event = QDropEvent(pos, Qt.DropAction.CopyAction, data, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    widget.dropEvent(event)
    assert event.isAccepted()


def test_typed_query_shows_results_and_preview(qtbot: Any, gui: GuiDriver,
                                               photo_dir: Path) -> None:
    window = gui.indexed(photo_dir)
    assert window.results.empty.title.text() == "Search your photos"
    qtbot.keyClicks(window.search_bar.edit, "a cat on a sofa")
    qtbot.keyClick(window.search_bar.edit, Qt.Key.Key_Return)
    gui.wait_results(window)
    hits = window.model.hits()
    assert len(hits) == 6
    assert {h.path for h in hits} == {p for p in photo_dir.rglob("*") if p.is_file()}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # The best hit is selected and previewed, and the text went into the history.
    assert window.preview.hit == hits[0]
    assert window.preview.name.text() == hits[0].path.name
    assert window.search_bar.edit.history() == ["a cat on a sofa"]
    qtbot.waitUntil(lambda: window.preview.view.image_rect() is not None, timeout=20_000)


def test_dropped_image_file_becomes_a_chip_and_finds_itself(
        qtbot: Any, gui: GuiDriver, photo_dir: Path) -> None:
    window = gui.indexed(photo_dir)
    target = photo_dir / "trip" / "coffee.jpg"
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(target))])
    drop(window.search_bar.edit, data)
    assert window.search_bar.image == target
    assert window.search_bar.chip.isVisible()
    assert window.search_bar.edit.text() == ""  # the URL is not pasted in as text
    gui.wait_results(window)
    best = window.model.hit(0)
    assert best is not None and best.path == target and best.score > 0.99
    # Removing the chip with no text left clears the query.
    qtbot.mouseClick(window.search_bar.chip.close_button, Qt.MouseButton.LeftButton)
    assert window.search_bar.image is None and not window.search_bar.chip.isVisible()


def test_dropped_image_data_from_a_browser(qtbot: Any, gui: GuiDriver,
                                           photo_dir: Path) -> None:
    window = gui.indexed(photo_dir)
    png = photo_dir / "camera.png"
    image = QImage(str(png))
    encoded = QMimeData()
    from imagesearch.gui.mime import image_bytes

    encoded.setData("image/png", image_bytes(image))  # bytes the browser offers as-is
    encoded.setUrls([QUrl("https://example.com/camera.png")])
    drop(window, encoded)  # onto the window, not the text box
    assert isinstance(window.search_bar.image, bytes)
    gui.wait_results(window)
    assert window.model.hit(0).path == png  # type: ignore[union-attr]

    pixels = QMimeData()
    pixels.setImageData(image)
    window.model.set_hits([])
    drop(window.search_bar.edit, pixels)
    assert isinstance(window.search_bar.image, bytes)
    gui.wait_results(window)
    assert window.model.hit(0).path == png  # type: ignore[union-attr]


def test_a_link_without_image_data_is_explained(qtbot: Any, make_window: WindowFactory) -> None:
    window = make_window()
    data = QMimeData()
    data.setUrls([QUrl("https://example.com/page.html")])
    drop(window, data)
    assert window.search_bar.image is None
    assert "link" in window.status.currentMessage()


def test_paste_image_and_copied_file(qtbot: Any, gui: GuiDriver,
                                     photo_dir: Path) -> None:
    window = gui.indexed(photo_dir)
    clipboard = QGuiApplication.clipboard()
    target = photo_dir / "trip" / "rocket.jpg"
    clipboard.setImage(QImage(str(target)))
    window.search_bar.edit.setFocus()
    qtbot.keyClick(window.search_bar.edit, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert isinstance(window.search_bar.image, bytes)
    gui.wait_results(window)
    assert window.model.hit(0).path == target  # type: ignore[union-attr]

    copied = QMimeData()
    copied.setUrls([QUrl.fromLocalFile(str(photo_dir / "astronaut.jpg"))])
    clipboard.setMimeData(copied)
    window.grid.setFocus()
    window.paste_action.trigger()  # Ctrl+V anywhere in the window
    assert window.search_bar.image == photo_dir / "astronaut.jpg"

    clipboard.setText("plain words")
    qtbot.keyClick(window.search_bar.edit, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert "plain words" in window.search_bar.edit.text()


def test_image_and_text_combine_with_the_weight(qtbot: Any, gui: GuiDriver,
                                                photo_dir: Path) -> None:
    window = gui.indexed(photo_dir)
    shown: list[tuple[int, list[Any], str]] = []
    refined: list[tuple[int, list[Any], str]] = []
    window.searches.results.connect(lambda rid, hits, what: shown.append((rid, hits, what)))
    window.searches.refined.connect(lambda rid, hits, what: refined.append((rid, hits, what)))
    bar = window.search_bar
    bar.set_image(photo_dir / "trip" / "coffee.jpg")  # searches by the image alone at once
    assert not bar.weight.isVisible()  # nothing to mix with yet
    qtbot.keyClicks(bar.edit, "a red mug")
    assert bar.weight.isVisible()
    bar.weight.setValue(80)  # with text and image both there, the mix searches again
    query = bar.query(10)
    assert query.text == "a red mug" and query.image == photo_dir / "trip" / "coffee.jpg"
    assert query.image_weight == 0.8 and query.top_k == 10
    qtbot.waitUntil(lambda: bool(refined) and "a red mug" in refined[-1][2], timeout=20_000)
    first = next(s for s in reversed(shown) if s[0] == refined[-1][0])
    request, hits, what = refined[-1]
    assert what == "coffee.jpg + “a red mug”" and request == window.searches.latest_id
    # What the grid shows is the mixed query's answer, not the image-only one before it:
    # first the shortlist's order, then the re-ranked one.
    ctx = window.library.ctx
    mixed = Query(text=query.text, image=query.image, image_weight=0.8,
                  top_k=window.settings.top_k)
    assert [(h.path, round(h.score, 5)) for h in first[1]] == \
        [(h.path, round(h.score, 5)) for h in ctx.search.begin(mixed).hits]
    final = ctx.search.search(mixed)
    alone = ctx.search.search(Query(image=query.image, top_k=window.settings.top_k))
    assert [(h.path, round(h.score, 5)) for h in hits] == \
        [(h.path, round(h.score, 5)) for h in final]
    assert [round(h.global_score or 0, 5) for h in final] != \
        [round(h.global_score or 0, 5) for h in alone]
    assert window.model.hits() == hits
    assert hits[0].path == query.image and hits[0].box is not None  # found, and boxed


def test_more_like_this(qtbot: Any, gui: GuiDriver, photo_dir: Path) -> None:
    window = gui.indexed(photo_dir)
    window.search_bar.edit.setText("rocket")
    window.run_search()
    gui.wait_results(window)
    # Not chelsea or cat: skimage's two names for one picture would tie.
    row = next(i for i, h in enumerate(window.model.hits()) if h.path.name == "coffee.jpg")
    window.grid.setCurrentIndex(window.model.index(row))
    chosen = window.preview.hit
    assert chosen is not None
    window.model.set_hits([])
    qtbot.mouseClick(window.preview.more_button, Qt.MouseButton.LeftButton)
    gui.wait_results(window)
    best = window.model.hit(0)
    assert best is not None and best.photo_id == chosen.photo_id and best.score > 0.99
    assert window.search_bar.image == chosen.path and window.search_bar.edit.text() == ""


def test_a_new_query_supersedes_the_running_one(qtbot: Any, gui: GuiDriver,
                                                photo_dir: Path) -> None:
    window = gui.indexed(photo_dir)
    seen: list[int] = []
    window.searches.results.connect(lambda rid, _hits, _what: seen.append(rid))
    first = window.searches.search(Query(text="first", top_k=2))
    second = window.searches.search(Query(text="second", top_k=3))
    third = window.searches.search(Query(text="third", top_k=4))
    qtbot.waitUntil(lambda: seen == [third], timeout=20_000)
    assert first < second < third
    assert window.searches.dropped == 1  # the first ran and was thrown away; second never ran
    assert window.model.rowCount() == 4


def test_keyboard_navigation_moves_the_preview(qtbot: Any, gui: GuiDriver,
                                               photo_dir: Path) -> None:
    window = gui.indexed(photo_dir)
    window.search_bar.edit.setText("anything")
    window.run_search()
    gui.wait_results(window)
    window.grid.setFocus()
    assert window.grid.currentIndex().row() == 0
    qtbot.keyClick(window.grid, Qt.Key.Key_Right)
    assert window.grid.currentIndex().row() == 1
    assert window.preview.hit == window.model.hit(1)
    qtbot.keyClick(window.grid, Qt.Key.Key_End)
    assert window.grid.currentIndex().row() == window.model.rowCount() - 1
    # Ctrl+F goes back to the search box, with its text selected for retyping.
    window.activateWindow()
    qtbot.waitUntil(lambda: window.isActiveWindow(), timeout=5000)
    window.grid.setFocus()
    qtbot.keyClick(window.grid, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    assert QApplication.focusWidget() is window.search_bar.edit
    assert window.search_bar.edit.selectedText() == "anything"


def test_a_newer_search_cancels_a_refinement_under_way(qtbot: Any, gui: GuiDriver,
                                                       photo_dir: Path) -> None:
    window = gui.indexed(photo_dir)
    searches = window.searches
    refined: list[int] = []
    searches.refined.connect(lambda rid, _hits, _what: refined.append(rid))
    started: list[int] = []

    def supersede(rid: int, on: bool) -> None:
        if on and not started:  # the first refinement has begun: ask something else now
            started.append(rid)
            window.search_bar.clear_image()
            window.search_bar.edit.setText("rocket")
            window.run_search()

    searches.refining.connect(supersede)
    window.search_bar.set_image(photo_dir / "trip" / "coffee.jpg")
    qtbot.waitUntil(lambda: bool(started), timeout=20_000)
    qtbot.waitUntil(lambda: not window.status.busy.isVisible(), timeout=20_000)
    assert started[0] not in refined  # cancelled, or dropped as stale: never shown
    assert searches.dropped >= 1
    assert window.model.hits() and all(h.box is None for h in window.model.hits())
    assert searches.latest_id > started[0]
