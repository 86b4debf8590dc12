"""Rendering service progress callbacks as terminal progress bars."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from imagesearch.domain import IndexProgress

# Progress phases with a bar of their own: the label for each.
_BARS = {"embedding": "Indexing", "local features": "Finding photo details",
         "ames features": "AMES descriptors"}


class IndexProgressBar:
    """A tqdm bar driven by IndexingService progress reports (quiet when not a terminal)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None
        self._phase = ""

    def __call__(self, p: IndexProgress) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if p.phase != self._phase:
            self.close()
            self._phase = p.phase
            if p.phase == "scanning":
                self._bar = tqdm(desc="Scanning", unit=" files", file=sys.stderr)
            elif p.phase in _BARS:
                self._bar = tqdm(desc=_BARS[p.phase], total=p.total, unit=" photos",
                                 file=sys.stderr)
        if self._bar is not None:
            self._bar.n = p.done
            if p.failed:
                self._bar.set_postfix(failed=p.failed, refresh=False)
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> IndexProgressBar:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class DownloadBar:
    """A tqdm bar for a weights download."""

    def __init__(self, label: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                         file=sys.stderr, disable=not sys.stderr.isatty())

    def __call__(self, done: int, total: int) -> None:
        if total and self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()
