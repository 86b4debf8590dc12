"""Live folder watching in the window: the FolderWatcher service, bridged to the GUI thread."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal

from imagesearch.gui.workers import TaskRunner

if TYPE_CHECKING:
    from imagesearch.services.context import AppContext
    from imagesearch.services.watching import FolderWatcher


class FolderWatch(QObject):
    """Starts, refreshes and stops the watcher; its reports arrive as queued signals.

    The watcher calls back on its own thread; emitting a signal of this object (which
    lives on the GUI thread) is what moves the report over.
    """

    changed = Signal(object)  # IndexReport
    failed = Signal(str)

    def __init__(self, runner: TaskRunner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self.watcher: FolderWatcher | None = None
        # Held while a queued start runs, so a stop() that comes first is never undone.
        self._life = threading.Lock()

    @property
    def running(self) -> bool:
        return self.watcher is not None and self.watcher.is_running

    def start(self, ctx: AppContext) -> None:
        """Follow the library's watched folders (scheduling walks the trees: off this thread)."""
        if self.watcher is not None:
            self.refresh()
            return
        from imagesearch.services.watching import FolderWatcher

        watcher = FolderWatcher(ctx.indexing, ctx.library, on_report=self.changed.emit,
                                on_error=lambda exc: self.failed.emit(str(exc)))
        self.watcher = watcher
        self._runner.submit("io", lambda: self._start_if_current(watcher),
                            error=lambda e: self.failed.emit(str(e)))

    def _start_if_current(self, watcher: FolderWatcher) -> None:
        with self._life:
            if self.watcher is watcher:
                watcher.start()

    def refresh(self) -> None:
        """The folders or their watch flags changed: follow exactly the watched ones."""
        watcher = self.watcher
        if watcher is not None:
            self._runner.submit("io", watcher.refresh, error=lambda e: self.failed.emit(str(e)))

    def stop(self) -> bool:
        """Stop and join the watcher's threads (a batch in progress is cut short).

        The wait is bounded; returns False if a thread is still busy after it.
        """
        with self._life:
            watcher, self.watcher = self.watcher, None
        return watcher.stop() if watcher is not None else True
