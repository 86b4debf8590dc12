"""The thread bridge: run service calls on pools and hand results back on the GUI thread.

Workers never touch widgets. A task's result, error and progress travel through the
signals of a QObject that lives on the GUI thread, so its slots run there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

log = logging.getLogger(__name__)

QUIT_WAIT_MS = 10_000  # on quit, how long running work may take to end

Report = Callable[[Any], None]
DoneCallback = Callable[[Any], None]
ErrorCallback = Callable[[BaseException], None]


class _Relay(QObject):
    """Lives on the GUI thread; its queued slots call the Python callbacks there."""

    done = Signal(object)
    failed = Signal(object)
    progress = Signal(object)

    def __init__(self, runner: TaskRunner, on_done: DoneCallback | None,
                 on_error: ErrorCallback | None, on_progress: DoneCallback | None) -> None:
        super().__init__()
        self._runner = runner
        self._on_done = on_done
        self._on_error = on_error
        self._on_progress = on_progress
        self.done.connect(self._deliver_done)
        self.failed.connect(self._deliver_error)
        self.progress.connect(self._deliver_progress)

    @Slot(object)
    def _deliver_done(self, result: Any) -> None:
        self._runner._forget(self)
        if self._on_done is not None and not self._runner.closing:
            self._on_done(result)

    @Slot(object)
    def _deliver_error(self, error: BaseException) -> None:
        self._runner._forget(self)
        if self._runner.closing:
            return
        if self._on_error is not None:
            self._on_error(error)
        else:
            log.error("background task failed: %s", error, exc_info=error)

    @Slot(object)
    def _deliver_progress(self, value: Any) -> None:
        if self._on_progress is not None and not self._runner.closing:
            self._on_progress(value)


class _Task(QRunnable):
    def __init__(self, fn: Callable[..., Any], relay: _Relay, with_report: bool) -> None:
        super().__init__()
        self._fn = fn
        self._relay = relay
        self._with_report = with_report

    def run(self) -> None:
        try:
            result = self._fn(self._relay.progress.emit) if self._with_report else self._fn()
        except BaseException as exc:
            self._relay.failed.emit(exc)
        else:
            self._relay.done.emit(result)


class TaskRunner(QObject):
    """Named thread pools plus the bookkeeping to shut them all down cleanly.

    Pools: ``search`` (one thread; the newest query wins), ``index`` (one long task),
    ``thumbs`` (decoding thumbnails), ``io`` (catalog reads, model setup, start-up).
    """

    POOLS: ClassVar[dict[str, int]] = {"search": 1, "index": 1, "thumbs": 2, "io": 2}

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.pools: dict[str, QThreadPool] = {}
        for name, threads in self.POOLS.items():
            pool = QThreadPool(self)
            pool.setMaxThreadCount(threads)
            pool.setObjectName(name)
            self.pools[name] = pool
        self.closing = False
        self._live: set[_Relay] = set()
        self._lock = threading.Lock()

    def submit(self, pool: str, fn: Callable[..., Any], *,
               done: DoneCallback | None = None, error: ErrorCallback | None = None,
               progress: DoneCallback | None = None, priority: int = 0) -> None:
        """Run ``fn`` on a pool; with ``progress`` given, fn receives a report callable."""
        if self.closing:
            return
        relay = _Relay(self, done, error, progress)
        with self._lock:
            self._live.add(relay)
        self.pools[pool].start(_Task(fn, relay, progress is not None), priority)

    def _forget(self, relay: _Relay) -> None:
        with self._lock:
            self._live.discard(relay)

    def busy(self) -> bool:
        return any(p.activeThreadCount() for p in self.pools.values())

    def wait_idle(self, msecs: int = -1) -> bool:
        """Wait for every pool to finish what it is running (tests, shutdown)."""
        return all(p.waitForDone(msecs) for p in self.pools.values())

    def shutdown(self, timeout_ms: int = QUIT_WAIT_MS) -> list[str]:
        """Drop queued work, then wait at most ``timeout_ms`` for running work.

        Callers cancel their events first, so work normally ends at once; a task stuck in
        a read from a stalled network share does not, and must not hold quitting up.
        Returns the names of the pools still busy after the wait.
        """
        self.closing = True
        for pool in self.pools.values():
            pool.clear()
        deadline = time.monotonic() + timeout_ms / 1000
        busy = [name for name, pool in self.pools.items()
                if not pool.waitForDone(max(0, int((deadline - time.monotonic()) * 1000)))]
        with self._lock:
            self._live.clear()
        if busy:
            log.warning("work still running after %d ms in: %s", timeout_ms, ", ".join(busy))
        return busy
