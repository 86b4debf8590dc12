"""One model, two kinds of callers: a person waiting for a search, and indexing."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class PriorityGate:
    """Lets one caller in at a time; a waiting urgent caller goes before waiting others.

    Indexing runs batch after batch. With a plain lock a query could wait behind several
    of them (a batch of a large model takes seconds on a CPU); here it waits for at most
    the one already running.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._urgent = 0  # urgent callers waiting
        self._waiting = 0  # all callers waiting

    @contextlib.contextmanager
    def hold(self, urgent: bool) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._urgent += urgent
            try:
                while self._busy or (not urgent and self._urgent):
                    self._cond.wait()
            finally:
                self._waiting -= 1
                self._urgent -= urgent
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    @property
    def waiting(self) -> int:
        """Callers waiting to get in now (for diagnostics and tests)."""
        with self._cond:
            return self._waiting
