"""Runs searches off the GUI thread; the newest request wins and stale results are dropped.

A search comes in two steps: the shortlist's hits at once, then (for an image query) the
re-ranked order with match boxes. A newer request cancels a refinement under way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal

from imagesearch.domain import Query, SearchHit
from imagesearch.gui.workers import TaskRunner

if TYPE_CHECKING:
    from imagesearch.services.context import AppContext
    from imagesearch.services.searching import SearchRound

SearchCall = Callable[[], "SearchRound | list[SearchHit]"]


class SearchController(QObject):
    """One search runs at a time; a request made meanwhile replaces any still waiting.

    Every request gets an id. Results are delivered only for the newest id, so a slow
    search that finishes after a newer one was asked for never reaches the grid.
    """

    results = Signal(int, list, str)  # request id, hits, what was searched for
    refined = Signal(int, list, str)  # request id, re-ranked hits (with boxes), what
    refining = Signal(int, bool)  # request id, whether a refinement is under way
    notes = Signal(int, list)  # request id, remarks about how the query was answered
    failed = Signal(int, object)  # request id, exception
    busy_changed = Signal(bool)

    def __init__(self, runner: TaskRunner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self._ctx: AppContext | None = None
        self.latest_id = 0
        self._running = False
        self._waiting: tuple[int, SearchCall, str] | None = None
        self._refine_cancel: threading.Event | None = None
        self.dropped = 0  # stale results thrown away (for tests and diagnostics)

    def set_context(self, ctx: AppContext | None) -> None:
        self._ctx = ctx

    def search(self, query: Query) -> int:
        ctx = self._ctx
        if ctx is None or query.is_empty:
            return 0
        what = _describe(query)
        return self._request(lambda: ctx.search.begin(query), what)

    def more_like(self, photo_id: int, top_k: int, name: str) -> int:
        ctx = self._ctx
        if ctx is None:
            return 0
        return self._request(lambda: ctx.search.more_like(photo_id, top_k), f"more like {name}")

    def cancel(self) -> None:
        """Forget the waiting request and make any running one stale."""
        self._waiting = None
        self.latest_id += 1
        self._stop_refining()

    def _stop_refining(self) -> None:
        if self._refine_cancel is not None:
            self._refine_cancel.set()

    def _request(self, call: SearchCall, what: str) -> int:
        self.latest_id += 1
        self._stop_refining()
        if self._running:
            self._waiting = (self.latest_id, call, what)
        else:
            self._start(self.latest_id, call, what)
        return self.latest_id

    def _start(self, request_id: int, call: SearchCall, what: str) -> None:
        self._running = True
        self.busy_changed.emit(True)
        self._runner.submit("search", call,
                            done=lambda found: self._finished(request_id, found, what, None),
                            error=lambda exc: self._finished(request_id, None, what, exc))

    def _finished(self, request_id: int, result: SearchRound | list[SearchHit] | None,
                  what: str, exc: BaseException | None) -> None:
        if request_id != self.latest_id:
            self.dropped += 1
        elif exc is not None:
            self.failed.emit(request_id, exc)
        elif isinstance(result, list) or result is None:
            self.results.emit(request_id, result or [], what)
        else:
            self.results.emit(request_id, result.hits, what)
            if result.notes:
                self.notes.emit(request_id, list(result.notes))
            if result.can_refine:
                self._refine(request_id, result, what)
                return  # still running: the refinement holds the search lane
        self._next()

    def _refine(self, request_id: int, search_round: SearchRound, what: str) -> None:
        cancel = threading.Event()
        self._refine_cancel = cancel
        self.refining.emit(request_id, True)

        def done(hits: list[SearchHit]) -> None:
            self._refined(request_id, hits, what, None, cancel, search_round)

        self._runner.submit("search", lambda: search_round.refine(cancel), done=done,
                            error=lambda e: self._refined(request_id, None, what, e, cancel,
                                                          search_round))

    def _refined(self, request_id: int, hits: list[SearchHit] | None, what: str,
                 exc: BaseException | None, cancel: threading.Event, search_round: Any) -> None:
        if self._refine_cancel is cancel:
            self._refine_cancel = None
        self.refining.emit(request_id, False)
        if request_id != self.latest_id or cancel.is_set():
            self.dropped += 1
        elif exc is not None:
            self.failed.emit(request_id, exc)
        else:
            self.refined.emit(request_id, hits or [], what)
            if search_round.notes:
                self.notes.emit(request_id, list(search_round.notes))
        self._next()

    def _next(self) -> None:
        self._running = False
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
