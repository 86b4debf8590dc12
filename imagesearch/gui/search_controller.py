"""Runs searches off the GUI thread; the newest request wins and stale results are dropped."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal

from imagesearch.domain import Query, SearchHit
from imagesearch.gui.workers import TaskRunner

if TYPE_CHECKING:
    from imagesearch.services.context import AppContext

SearchCall = Callable[[], list[SearchHit]]


class SearchController(QObject):
    """One search runs at a time; a request made meanwhile replaces any still waiting.

    Every request gets an id. Results are delivered only for the newest id, so a slow
    search that finishes after a newer one was asked for never reaches the grid.
    """

    results = Signal(int, list, str)  # request id, hits, what was searched for
    failed = Signal(int, object)  # request id, exception
    busy_changed = Signal(bool)

    def __init__(self, runner: TaskRunner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self._ctx: AppContext | None = None
        self.latest_id = 0
        self._running = False
        self._waiting: tuple[int, SearchCall, str] | None = None
        self.dropped = 0  # stale results thrown away (for tests and diagnostics)

    def set_context(self, ctx: AppContext | None) -> None:
        self._ctx = ctx

    def search(self, query: Query) -> int:
        ctx = self._ctx
        if ctx is None or query.is_empty:
            return 0
        what = _describe(query)
        return self._request(lambda: ctx.search.search(query), what)

    def more_like(self, photo_id: int, top_k: int, name: str) -> int:
        ctx = self._ctx
        if ctx is None:
            return 0
        return self._request(lambda: ctx.search.more_like(photo_id, top_k), f"more like {name}")

    def cancel(self) -> None:
        """Forget the waiting request and make any running one stale."""
        self._waiting = None
        self.latest_id += 1

    def _request(self, call: SearchCall, what: str) -> int:
        self.latest_id += 1
        if self._running:
            self._waiting = (self.latest_id, call, what)
        else:
            self._start(self.latest_id, call, what)
        return self.latest_id

    def _start(self, request_id: int, call: SearchCall, what: str) -> None:
        self._running = True
        self.busy_changed.emit(True)
        self._runner.submit("search", call,
                            done=lambda hits: self._finished(request_id, hits, what, None),
                            error=lambda exc: self._finished(request_id, None, what, exc))

    def _finished(self, request_id: int, hits: list[SearchHit] | None, what: str,
                  exc: BaseException | None) -> None:
        self._running = False
        if request_id != self.latest_id:
            self.dropped += 1
        elif exc is not None:
            self.failed.emit(request_id, exc)
        else:
            self.results.emit(request_id, hits or [], what)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self._start(*waiting)
        else:
            self.busy_changed.emit(False)


def _describe(query: Query) -> str:
    parts = []
    if query.image is not None:
        parts.append(query.image.name if not isinstance(query.image, bytes) else "image")
    if query.text.strip():
        parts.append(f"“{query.text.strip()}”")
    return " + ".join(parts)
