"""Runs indexing on its own pool with pause, cancel, and a rerun when asked again meanwhile."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal

from imagesearch.domain import IndexProgress, IndexReport
from imagesearch.gui.workers import TaskRunner

if TYPE_CHECKING:
    from imagesearch.services.context import AppContext


class IndexingController(QObject):
    """Starts ``ctx.indexing.run`` in a worker and reports on the GUI thread.

    Pausing works through the progress callback, which the service calls from its own
    thread between batches: while paused it waits there, so no batch is half done.
    """

    started = Signal()
    progress = Signal(object)  # IndexProgress
    finished = Signal(object)  # IndexReport
    failed = Signal(object)  # exception

    def __init__(self, runner: TaskRunner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self._ctx: AppContext | None = None
        self.running = False
        self._rerun = False
        self._retry = False
        self.cancel_event = threading.Event()
        self._resume = threading.Event()
        self._resume.set()

    def set_context(self, ctx: AppContext | None) -> None:
        self._ctx = ctx

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def start(self, retry_failed: bool = False) -> None:
        """Index the whole library (only what changed is embedded)."""
        ctx = self._ctx
        if ctx is None:
            return
        if self.running:
            self._rerun = True
            self._retry = self._retry or retry_failed
            return
        self.running = True
        self.cancel_event = threading.Event()
        self._resume.set()
        cancel, resume = self.cancel_event, self._resume

        def work(report: Any) -> IndexReport:
            def on_progress(p: IndexProgress) -> None:
                report(p)
                while not resume.is_set() and not cancel.is_set():
                    resume.wait(0.1)

            run = ctx.indexing.retry_failed if retry_failed else ctx.indexing.run
            return run(progress=on_progress, cancel=cancel)

        self.started.emit()
        self._runner.submit("index", work, progress=self.progress.emit,
                            done=self._done, error=self._error)

    def pause(self, paused: bool) -> None:
        if paused:
            self._resume.clear()
        else:
            self._resume.set()

    def cancel(self) -> None:
        self._rerun = False
        self.cancel_event.set()
        self._resume.set()

    def _done(self, report: IndexReport) -> None:
        self.running = False
        self.finished.emit(report)
        self._maybe_rerun()

    def _error(self, exc: BaseException) -> None:
        self.running = False
        self.failed.emit(exc)
        self._maybe_rerun()

    def _maybe_rerun(self) -> None:
        if self._rerun and not self.cancel_event.is_set():
            retry, self._rerun, self._retry = self._retry, False, False
            self.start(retry_failed=retry)
