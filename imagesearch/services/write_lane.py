"""The one lane every catalog-and-index write goes through."""

from __future__ import annotations

import threading
from types import TracebackType


class WriteLane:
    """Serialises writers: a catalog commit and the index update that mirrors it happen
    together, so a reader never sees the index ahead of or behind the catalog for long,
    and the generation the index records is the one its contents reflect.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> WriteLane:
        self._lock.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._lock.release()
