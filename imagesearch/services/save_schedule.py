"""When to write a file that follows a stream of changes: once they settle, or at the latest
a while after the first unsaved one, so a burst costs one write, not one a change."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class SaveSchedule:
    """Calls ``write`` on a thread of its own once requests have been quiet ``delay_s``,
    and at the latest ``max_delay_s`` after the first request it has not served."""

    def __init__(self, write: Callable[[], object], delay_s: float, max_delay_s: float,
                 name: str) -> None:
        self.write = write
        self.delay_s = delay_s
        self.max_delay_s = max(max_delay_s, delay_s)
        self.name = name
        self._cond = threading.Condition()
        self._first_unsaved: float | None = None
        self._last_request = 0.0
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def request(self) -> bool:
        """Ask for a write once things settle; False once stopped (the caller writes)."""
        with self._cond:
            if self._closed:
                return False
            now = time.monotonic()
            self._last_request = now
            if self._first_unsaved is None:
                self._first_unsaved = now
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=self.name)
                self._thread.start()
            self._cond.notify_all()
        return True

    def stop(self) -> None:
        """No more scheduled writes; waits for one in progress to finish."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()  # at once when idle; else it finishes the write it is making

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    first = self._first_unsaved
                    if first is None:
                        self._cond.wait()
                        continue
                    due = min(self._last_request + self.delay_s, first + self.max_delay_s)
                    wait = due - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._closed:
                    return  # the owner writes what is left as it closes
                self._first_unsaved = None
            try:
                self.write()
            except Exception:  # the next request tries again; this thread must live on
                log.exception("%s: writing failed", self.name)
