"""The library's life in the window: open it off the GUI thread, change it, keep views current."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QFileDialog

from imagesearch.config import Settings
from imagesearch.domain import FolderInfo, IndexReport, LibraryStatus, PhotoRecord
from imagesearch.errors import ModelLoadError, ModelUnavailable
from imagesearch.gui.folder_watch import FolderWatch
from imagesearch.gui.status import count_text

if TYPE_CHECKING:
    from imagesearch.gui.main_window import MainWindow
    from imagesearch.services.context import AppContext
    from imagesearch.services.thumbnails import ThumbnailCache

Snapshot = tuple[list[FolderInfo], LibraryStatus, list[PhotoRecord]]

_REFRESH_EVERY_S = 2.0  # while indexing, how often the counts are re-read


def default_context(settings: Settings) -> AppContext:
    from imagesearch.services.context import build_context  # SQLAlchemy, NumPy: not at start

    return build_context(settings)


class LibraryController(QObject):
    """Owns the AppContext and everything that reads or changes the library."""

    def __init__(self, window: MainWindow,
                 factory: Callable[[Settings], AppContext] | None = None) -> None:
        super().__init__(window)
        self.w = window
        self.factory = factory or default_context
        self.ctx: AppContext | None = None
        self.thumbnail_cache: ThumbnailCache | None = None
        self.folders: list[FolderInfo] = []
        self.status: LibraryStatus | None = None
        self.open_error: str | None = None
        self._last_refresh = 0.0
        self.watch = FolderWatch(window.runner, self)
        self.watch.changed.connect(self._watch_changed)
        self.watch.failed.connect(lambda text: window.status.showMessage(text, 10000))
        indexer = window.indexer
        indexer.started.connect(lambda: window.library_panel.set_indexing(True))
        indexer.progress.connect(self._index_progress)
        indexer.finished.connect(self._index_finished)
        indexer.failed.connect(self._index_failed)
        self.open(window.settings)

    # Opening and closing -------------------------------------------------------------------

    def open(self, settings: Settings, before: Callable[[], None] | None = None) -> None:
        """Open the library off the GUI thread; ``before`` runs first, on the same worker."""
        factory = self.factory
        runner = self.w.runner

        def work() -> tuple[AppContext, ThumbnailCache]:
            from imagesearch.services.thumbnails import ThumbnailCache

            if before is not None:
                before()
            ctx = factory(settings)
            if runner.closing:  # the window closed meanwhile: nobody will close it later
                ctx.close()
            else:
                ctx.serve_queries()  # `imagesearch search` in a terminal asks this window
            return ctx, ThumbnailCache(settings.thumbnails_dir,
                                       settings.thumbnail_cache_mb << 20)

        self.w.runner.submit("io", work, done=self._opened, error=self._open_failed)

    def _opened(self, result: tuple[AppContext, ThumbnailCache]) -> None:
        self.ctx, self.thumbnail_cache = result
        self.open_error = None
        w = self.w
        w.thumbs.set_cache(self.thumbnail_cache)
        w.searches.set_context(self.ctx)
        w.indexer.set_context(self.ctx)
        w.model_setup.set_context(self.ctx)
        self.refresh(then=self._after_first_refresh)
        if self.ctx.models.weights_present():
            self.model_ready(index=False)
        elif self.ctx.indexing.can_index():
            # No model yet: photos are indexed by their details (search by image works),
            # and watched; descriptions wait for the weights.
            self.watch.start(self.ctx)
        self.ctx.local.refresh_later()  # the local-feature index catches up off this thread
        self.ctx.vectors.open_later()  # read before the first search needs it

    def _after_first_refresh(self) -> None:
        if self.folders and self.ctx is not None and self.ctx.indexing.can_index():
            self.w.indexer.start()  # catch up with what changed while the app was closed

    def _open_failed(self, exc: BaseException) -> None:
        self.open_error = str(exc)
        self.w.results.show_message("The library cannot be opened", str(exc))
        self.w.status.showMessage(str(exc))

    def reopen(self, settings: Settings) -> None:
        """Another model or device: stop and close the old context, then open anew.

        Only cancelling happens here. Waiting for the batch being indexed, joining the
        watcher's threads and closing the catalog can take seconds: they run on a
        worker, before the new context opens there.
        """
        self.w.indexer.cancel()
        self.w.searches.cancel()
        self.w.model_setup.cancel_event.set()  # a download of the old model ends too
        old, self.ctx = self.ctx, None
        self.w.searches.set_context(None)
        self.w.indexer.set_context(None)
        self.w.model.set_hits([])
        self.w.results.show_message("Opening the library…", str(settings.library_dir))
        pools = [self.w.runner.pools[name] for name in ("index", "search")]
        watch = self.watch

        def close_old() -> None:
            for pool in pools:  # the cancelled run ends after its current batch
                pool.waitForDone()
            watch.stop()
            if old is not None:
                old.close()

        self.open(settings, before=close_old)

    def close(self) -> None:
        if self.ctx is not None:
            self.ctx.close()
            self.w.unfinished.extend(self.ctx.unfinished)  # the process exits without them
        self.ctx = None
        self.w.searches.set_context(None)
        self.w.indexer.set_context(None)

    def cancel_model_load(self) -> None:
        if self.ctx is not None:
            self.ctx.models.cancel_loading()

    def stop_watching(self) -> bool:
        """Stop the folder watcher; False if a thread of it is still busy after the wait."""
        return self.watch.stop()

    def model_ready(self, index: bool = True) -> None:
        """Weights are on disk: load the model in the background so the first search is quick."""
        ctx = self.ctx
        if ctx is None:
            return
        self.w.runner.submit("io", lambda: ctx.models.encoder(), done=self._model_loaded,
                             error=self._model_failed)
        if index and self.folders:
            self.w.indexer.start()

    def _model_loaded(self, _encoder: object) -> None:
        self.refresh()
        if self.ctx is not None:
            self.watch.start(self.ctx)  # watching indexes as files change: it needs the model

    def _watch_changed(self, report: IndexReport) -> None:
        parts = [f"{n} {what}" for n, what in ((report.added, "new"),
                 (report.updated, "updated"), (report.moved, "moved"),
                 (report.removed, "removed"), (report.failed, "failed")) if n]
        if report.offline_folders:
            parts.append(f"offline: {', '.join(str(p) for p in report.offline_folders)}")
        self.w.status.showMessage("Folder changes: " + ", ".join(parts), 8000)
        self.refresh()

    def _model_failed(self, exc: BaseException) -> None:
        if isinstance(exc, ModelUnavailable | ModelLoadError):
            self.w.model_setup.refresh(str(exc) if isinstance(exc, ModelLoadError) else "")
        self.w.status.showMessage(str(exc), 10000)

    # Reading the library -------------------------------------------------------------------

    def refresh(self, then: Callable[[], Any] | None = None) -> None:
        ctx = self.ctx
        if ctx is None:
            return
        self._last_refresh = time.monotonic()

        def work() -> Snapshot:
            return ctx.library.folders(), ctx.library.status(), ctx.library.failures()

        def done(snap: Snapshot) -> None:
            self._apply(snap)
            if then is not None:
                then()

        self.w.runner.submit("io", work, done=done, error=self._report)

    def _apply(self, snap: Snapshot) -> None:
        self.folders, self.status, failures = snap
        self.w.library_panel.set_folders(self.folders)
        self.w.library_panel.set_failures(failures)
        self.w.status.set_status(self.status)
        if not self.w.results.showing_grid and not self.w.search_bar.query(1).text \
                and self.w.search_bar.image is None:
            self.show_idle_message()

    def show_idle_message(self) -> None:
        r = self.w.results
        if self.ctx is None:
            if self.open_error is None:
                r.show_message("Opening the library…", str(self.w.settings.library_dir))
            return
        if not self.folders:
            r.show_message("Add a folder of photos to start",
                           "imagesearch indexes the photos in the folders you choose, on this "
                           "computer, and finds them by a description or a similar image. "
                           "Add a folder here, press Ctrl+O, or drop one on the window.",
                           "Add folder…")
            return
        count = self.status.indexed_count if self.status else 0
        r.show_message("Search your photos",
                       f"Type a description and press Enter, or drop or paste an image. "
                       f"{count_text(count)} photos are indexed.")

    def show_no_results(self, what: str) -> None:
        count = self.status.indexed_count if self.status else 0
        body = (f"Nothing matched {what}." if count else
                "No photo is indexed yet: add a folder, and wait for indexing to finish.")
        self.w.results.show_message("No results", body)

    # Changing the library ------------------------------------------------------------------

    def pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.w, "Add a folder of photos",
                                                  str(Path.home()))
        if folder:
            self.add_folders([Path(folder)])

    def add_folders(self, paths: Sequence[Path]) -> None:
        ctx = self.ctx
        if ctx is None:
            return

        def work() -> list[str]:
            problems = []
            for p in paths:
                try:
                    ctx.library.add_folder(p)
                except Exception as exc:
                    problems.append(str(exc))
            return problems

        def done(problems: list[str]) -> None:
            self.w.library_panel.show_notice("\n".join(problems))
            if problems:
                self.w.status.showMessage(problems[0], 10000)
            if len(problems) < len(paths):
                self.refresh()
                self.watch.refresh()
                if ctx.indexing.can_index():
                    self.w.indexer.start()
                if not ctx.models.weights_present():
                    self.w.model_setup.refresh()

        self.w.runner.submit("io", work, done=done, error=self._report)

    def remove_folder(self, path: Path) -> None:
        ctx = self.ctx
        if ctx is not None:
            self.w.runner.submit("io", lambda: ctx.library.remove_folder(path),
                                 done=lambda n: self._removed(path, n), error=self._report)

    def _removed(self, path: Path, count: int) -> None:
        self.w.status.showMessage(f"Removed {path} ({count} photos) from the library", 8000)
        self.refresh()
        self.watch.refresh()
        if self.w.results.showing_grid:
            self.w.run_search()

    def set_watched(self, path: Path, watched: bool) -> None:
        ctx = self.ctx
        if ctx is not None:
            self.w.runner.submit("io", lambda: ctx.library.set_watched(path, watched),
                                 done=lambda _r: self._watch_flag_stored(), error=self._report)

    def _watch_flag_stored(self) -> None:
        self.refresh()
        self.watch.refresh()

    def _report(self, exc: BaseException) -> None:
        self.w.library_panel.show_notice(str(exc))
        self.w.status.showMessage(str(exc), 10000)

    # Indexing ------------------------------------------------------------------------------

    def _index_progress(self, progress: Any) -> None:
        self.w.library_panel.show_progress(progress)
        if time.monotonic() - self._last_refresh > _REFRESH_EVERY_S:
            self.refresh()

    def _index_finished(self, report: IndexReport) -> None:
        self.w.library_panel.set_indexing(False)
        if report.cancelled:
            text = "Indexing cancelled; what was done is kept."
        else:
            text = (f"Indexed: {report.added} new, {report.updated} updated, {report.moved} "
                    f"moved, {report.removed} removed, {report.failed} failed "
                    f"({report.seconds:.1f} s)")
        if report.offline_folders:
            text += f"; offline: {', '.join(str(p) for p in report.offline_folders)}"
        if report.warnings:
            text += "; " + "; ".join(report.warnings)
        self.w.status.showMessage(text, 10000)
        self.refresh()

    def _index_failed(self, exc: BaseException) -> None:
        self.w.library_panel.set_indexing(False)
        if isinstance(exc, ModelUnavailable | ModelLoadError):
            self.w.model_setup.refresh(str(exc) if isinstance(exc, ModelLoadError) else "")
            self.w.library_panel.show_notice("Indexing waits for the model weights.")
        else:
            self._report(exc)
        self.refresh()

    @staticmethod
    def to_pixmap(image: QImage) -> QPixmap:
        return QPixmap.fromImage(image)
