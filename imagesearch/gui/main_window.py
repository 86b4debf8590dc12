"""The main window: composes the panels and connects them to the controllers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QDockWidget,
    QMainWindow,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from imagesearch.config import Settings
from imagesearch.domain import SearchHit
from imagesearch.errors import ModelLoadError, ModelUnavailable
from imagesearch.gui import mime
from imagesearch.gui.indexing_controller import IndexingController
from imagesearch.gui.library_controller import LibraryController
from imagesearch.gui.library_panel import LibraryPanel
from imagesearch.gui.model_setup import ModelSetup
from imagesearch.gui.preview_pane import PREVIEW_SIZE, PreviewPane
from imagesearch.gui.results_model import ResultsModel
from imagesearch.gui.results_view import ResultsArea
from imagesearch.gui.search_bar import SearchBar
from imagesearch.gui.search_controller import SearchController
from imagesearch.gui.settings_dialog import SettingsDialog
from imagesearch.gui.status import StatusBar
from imagesearch.gui.thumbnails import ThumbnailLoader, load_thumbnail_image
from imagesearch.gui.workers import TaskRunner

if TYPE_CHECKING:
    from imagesearch.services.context import AppContext

ContextFactory = Callable[[Settings], "AppContext"]


class MainWindow(QMainWindow):
    """Search bar and results in the middle, preview on the right, library in a dock."""

    def __init__(self, settings: Settings, state: QSettings,
                 context_factory: ContextFactory | None = None) -> None:
        super().__init__()
        self.setWindowTitle("imagesearch")
        self.setObjectName("mainWindow")
        self.setAcceptDrops(True)
        self.settings = settings
        self.state = state
        self.runner = TaskRunner(self)
        self.thumbs = ThumbnailLoader(self.runner, None, self)
        self.model = ResultsModel(self.thumbs, settings.thumbnail_size, self)
        self.searches = SearchController(self.runner, self)
        self.indexer = IndexingController(self.runner, self)

        self.search_bar = SearchBar(self.runner, settings.image_weight, self)
        self.model_setup = ModelSetup(self.runner, self)
        self.results = ResultsArea(self.model, self)
        self.grid = self.results.grid
        self.grid.set_thumb_size(settings.thumbnail_size)
        self.preview = PreviewPane(self)
        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.setObjectName("resultsSplitter")
        self.splitter.addWidget(self.results)
        self.splitter.addWidget(self.preview)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        central = QWidget(self)
        layout = QVBoxLayout(central)
        layout.addWidget(self.search_bar)
        layout.addWidget(self.model_setup)
        layout.addWidget(self.splitter, 1)
        self.setCentralWidget(central)

        self.library_panel = LibraryPanel(self)
        self.library_dock = QDockWidget("Library", self)
        self.library_dock.setObjectName("libraryDock")
        self.library_dock.setWidget(self.library_panel)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.library_dock)
        self.status = StatusBar(self)
        self.setStatusBar(self.status)
        self.library = LibraryController(self, context_factory)
        self.closed = False
        self.unfinished: list[str] = []  # work that did not end on quit (see shutdown)

        self._build_actions()
        self._connect()
        self._restore_state()
        self.results.show_message("Opening the library…", str(settings.library_dir))

    # Composition ---------------------------------------------------------------------------

    def _build_actions(self) -> None:
        def action(text: str, keys: Any, slot: Callable[[], Any]) -> QAction:
            act = QAction(text, self)
            act.setShortcut(keys)
            act.triggered.connect(slot)
            self.addAction(act)
            return act

        self.find_action = action("Find", QKeySequence.StandardKey.Find, self.focus_search)
        self.add_action = action("Add folder…", QKeySequence.StandardKey.Open,
                                 self.library.pick_folder)
        self.quit_action = action("Quit", QKeySequence("Ctrl+Q"), self.close)
        self.paste_action = action("Paste image", QKeySequence.StandardKey.Paste,
                                   self.paste)
        self.settings_action = action("Settings…", QKeySequence.StandardKey.Preferences,
                                      self.open_settings)
        self.index_action = action("Index now", QKeySequence("F5"), self.indexer.start)
        menu = self.menuBar().addMenu("&File")
        menu.addActions([self.add_action, self.index_action, self.settings_action])
        menu.addSeparator()
        menu.addAction(self.quit_action)
        edit = self.menuBar().addMenu("&Edit")
        edit.addActions([self.find_action, self.paste_action])
        view = self.menuBar().addMenu("&View")
        view.addAction(self.library_dock.toggleViewAction())

    def _connect(self) -> None:
        self.search_bar.submitted.connect(self.run_search)
        self.searches.results.connect(self._show_results)
        self.searches.refined.connect(self._show_refined)
        self.searches.refining.connect(lambda _rid, on: self.status.set_refining(on))
        self.searches.notes.connect(
            lambda _rid, notes: self.status.showMessage("; ".join(notes).capitalize(), 10000))
        self.searches.failed.connect(self._search_failed)
        self.searches.busy_changed.connect(self.status.set_busy)
        self.grid.selectionModel().currentChanged.connect(self._current_changed)
        self.grid.activated.connect(lambda _idx: self.preview.open_file())
        self.preview.more_like.connect(self.more_like)
        self.results.empty.action.connect(self.library.pick_folder)
        self.model_setup.message.connect(self.status.showMessage)
        self.model_setup.installed.connect(self.library.model_ready)
        panel = self.library_panel
        panel.add_requested.connect(self.library.pick_folder)
        panel.folders_dropped.connect(self.library.add_folders)
        panel.remove_requested.connect(self.library.remove_folder)
        panel.watch_toggled.connect(self.library.set_watched)
        panel.index_requested.connect(self.indexer.start)
        panel.retry_requested.connect(lambda: self.indexer.start(retry_failed=True))
        panel.pause_toggled.connect(self.indexer.pause)
        panel.cancel_requested.connect(self.indexer.cancel)

    # Searching -----------------------------------------------------------------------------

    def focus_search(self) -> None:
        self.search_bar.edit.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.search_bar.edit.selectAll()

    def run_search(self) -> None:
        query = self.search_bar.query(self.settings.top_k)
        if query.is_empty:
            self.searches.cancel()
            self.model.set_hits([])
            self.library.show_idle_message()
            return
        self.searches.search(query)

    def more_like(self, photo_id: int) -> None:
        hit = self.preview.hit
        name = hit.path.name if hit is not None else f"photo {photo_id}"
        if hit is not None:
            self.search_bar.edit.clear()
            self.search_bar.image = hit.path
            self.search_bar.chip.show_source(hit.path)
            self.search_bar.chip.show()
        self.searches.more_like(photo_id, self.settings.top_k, name)

    def paste(self) -> None:
        clip = QGuiApplication.clipboard().mimeData()
        source = mime.image_query(clip)
        if source is not None:
            self.search_bar.set_image(source)
        elif clip.hasText():
            self.focus_search()
            self.search_bar.edit.insert(clip.text())

    def _show_results(self, _request_id: int, hits: list[SearchHit], what: str) -> None:
        self.model.set_hits(hits, self.settings.thumbnail_size)
        self.preview.show_hit(None)
        if hits:
            self.results.show_grid()
            self.grid.setCurrentIndex(self.model.index(0))
            self.status.showMessage(f"{len(hits)} results for {what}", 5000)
        else:
            self.library.show_no_results(what)

    def _show_refined(self, _request_id: int, hits: list[SearchHit], what: str) -> None:
        """The re-ranked order replaces the first one; the selected photo stays selected."""
        current = self.model.hit(self.grid.currentIndex().row())
        self.model.set_hits(hits, self.settings.thumbnail_size)
        if not hits:
            return
        row = next((i for i, h in enumerate(hits)
                    if current is not None and h.photo_id == current.photo_id), 0)
        self.grid.setCurrentIndex(self.model.index(row))
        verified = sum(1 for h in hits if h.box is not None)
        self.status.showMessage(
            f"{len(hits)} results for {what}; the object was found in {verified}"
            if verified else f"{len(hits)} results for {what}; the object was not found "
            "in detail in any of them", 8000)

    def _search_failed(self, _request_id: int, exc: BaseException) -> None:
        if isinstance(exc, ModelUnavailable | ModelLoadError):
            self.model_setup.refresh(str(exc) if isinstance(exc, ModelLoadError) else "")
        self.status.showMessage(str(exc), 10000)
        if not self.results.showing_grid or not self.model.rowCount():
            self.results.show_message("Cannot search", str(exc))

    def _current_changed(self, current: Any, _previous: Any) -> None:
        hit = self.model.hit(current.row()) if current.isValid() else None
        self.preview.show_hit(hit)
        cache = self.library.thumbnail_cache
        if hit is None or cache is None:
            return
        key = (hit.path, hit.mtime, PREVIEW_SIZE)
        self.runner.submit(
            "io", lambda: load_thumbnail_image(cache, key),
            done=lambda image: self.preview.set_image(hit, self.library.to_pixmap(image)),
            error=lambda exc: self.preview.set_image(hit, None, str(exc)))

    # Settings and state --------------------------------------------------------------------

    def open_settings(self) -> None:
        ctx = self.library.ctx
        models = ctx.models.models() if ctx is not None else []
        dialog = SettingsDialog(self.settings, models, self)
        if dialog.exec():
            self.apply_settings(dialog.settings())

    def apply_settings(self, new: Settings) -> None:
        old, self.settings = self.settings, new
        new.save()
        if new.thumbnail_size != old.thumbnail_size:
            self.grid.set_thumb_size(new.thumbnail_size)
            self.model.set_thumb_size(new.thumbnail_size)
        if _reopen_needed(old, new):
            self.library.reopen(new)
        elif self.library.ctx is not None:
            self.library.ctx.update_settings(new)

    def _restore_state(self) -> None:
        geometry = self.state.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1280, 800)
        window_state = self.state.value("windowState")
        if window_state is not None:
            self.restoreState(window_state)
        splitter = self.state.value("splitter")
        if splitter is not None:
            self.splitter.restoreState(splitter)
        else:
            self.splitter.setSizes([900, 320])
        history = self.state.value("history", [])
        # INI files give back a single-item list as a plain string.
        items = [history] if isinstance(history, str) else history
        self.search_bar.edit.set_history([str(h) for h in items or []]
                                         if isinstance(items, list) else [])

    def save_state(self) -> None:
        self.state.setValue("geometry", self.saveGeometry())
        self.state.setValue("windowState", self.saveState())
        self.state.setValue("splitter", self.splitter.saveState())
        self.state.setValue("history", self.search_bar.edit.history())
        self.state.sync()

    # Drops and closing ---------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        data = event.mimeData()
        if mime.offers_image(data) or mime.folders(data) or mime.remote_urls(data):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        data = event.mimeData()
        folders = mime.folders(data)
        source = mime.image_query(data)
        event.acceptProposedAction()
        if folders:
            self.library.add_folders(folders)
        elif source is not None:
            self.search_bar.set_image(source)
        elif mime.remote_urls(data):
            self.status.showMessage("That is a link, not an image: drag the picture itself, "
                                    "or save it and drop the file.", 8000)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.save_state()
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Cancel everything running, wait (bounded) for every pool, then close the catalog.

        Work still running after the wait is recorded in ``unfinished``: the process then
        exits without waiting for it (see app.run).
        """
        if self.closed:
            return
        self.closed = True
        self.indexer.cancel()
        self.model_setup.cancel_event.set()
        self.library.cancel_model_load()  # a first-time runtime probe is killed, not awaited
        self.searches.cancel()
        self.thumbs.reset()
        # First: a watcher start or refresh may be on the io pool.
        self.unfinished = self.runner.shutdown()
        if not self.library.stop_watching():
            self.unfinished.append("watcher")
        self.library.close()

    def library_dir(self) -> Path:
        return self.settings.library_dir


def _reopen_needed(old: Settings, new: Settings) -> bool:
    """Settings the library's services are built from: changing one reopens the library
    (the re-ranker in use and AMES's descriptors and backfill come with it)."""
    def key(s: Settings) -> tuple[object, ...]:
        ames = s.rerank == "ames"
        return (s.model_id, s.device, s.local_features, s.storage, ames,
                s.ames_model if ames else None)
    return key(old) != key(new)
