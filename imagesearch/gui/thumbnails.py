"""Asynchronous thumbnails: decode on a pool, convert to QPixmap on the GUI thread, keep a few."""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage, QPixmap

from imagesearch.gui.workers import TaskRunner

if TYPE_CHECKING:
    from imagesearch.services.thumbnails import ThumbnailCache

ThumbKey = tuple[Path, float | None, int]

_KEEP = 800  # pixmaps held in memory: a few screens of tiles either way of the viewport
# A tile not painted for this long while others were has left the screen: its thumbnail
# is not made when its turn comes (scrolling fast, or jumping, would otherwise queue
# work for thousands of tiles seen for a frame each).
STALE_S = 0.25
_SKIPPED = object()  # what a worker returns for such a tile


def load_thumbnail_image(cache: ThumbnailCache, key: ThumbKey) -> QImage:
    """Worker side: the cached JPEG (made if missing) as a QImage; never a QPixmap here."""
    path, mtime, size = key
    image = QImage(str(cache.get(path, mtime, size)))
    if image.isNull():
        raise ValueError(f"cannot read the thumbnail of {path}")
    return image


class ThumbnailLoader(QObject):
    """Hands out thumbnails by key; missing ones are requested once and announced by ``ready``.

    Later requests run first (a rising priority), so the tiles on screen now win over
    those scrolled past a moment ago, and the work for a tile that has left the screen is
    skipped (STALE_S). ``reset`` forgets queued work for an old result set.
    """

    ready = Signal(object)  # ThumbKey
    failed = Signal(object, str)  # ThumbKey, reason

    def __init__(self, runner: TaskRunner, cache: ThumbnailCache | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self._cache = cache
        self._pixmaps: OrderedDict[ThumbKey, QPixmap] = OrderedDict()
        self._pending: set[ThumbKey] = set()
        self._broken: dict[ThumbKey, str] = {}
        self._counter = itertools.count()
        self._generation = threading.Event()  # set: the queued work is obsolete
        # When each waiting tile was last painted, and when any was (read by workers).
        self._asked: dict[ThumbKey, float] = {}
        self._last_ask = 0.0

    def set_cache(self, cache: ThumbnailCache) -> None:
        self._cache = cache
        self.reset()

    def pixmap(self, key: ThumbKey) -> QPixmap | None:
        """The pixmap if it is in memory; otherwise start loading it and return None."""
        if self._cache is None:
            return None
        pix = self._pixmaps.get(key)
        if pix is not None:
            self._pixmaps.move_to_end(key)
            return pix
        if key in self._broken:
            return None
        self._asked[key] = self._last_ask = time.monotonic()
        if key not in self._pending:
            self._request(key)
        return None

    def error(self, key: ThumbKey) -> str | None:
        return self._broken.get(key)

    def reset(self) -> None:
        """A new result set: queued requests for the old one are skipped when they come up."""
        self._generation.set()
        self._generation = threading.Event()
        self._pending.clear()
        self._asked.clear()

    def _request(self, key: ThumbKey) -> None:
        self._pending.add(key)
        obsolete = self._generation
        cache = self._cache
        assert cache is not None

        def work() -> QImage | object | None:
            if obsolete.is_set():
                return None
            if self._last_ask - self._asked.get(key, self._last_ask) > STALE_S:
                return _SKIPPED
            return load_thumbnail_image(cache, key)

        self._runner.submit(
            "thumbs", work, priority=min(next(self._counter), 2**30),
            done=lambda image: self._loaded(key, image, obsolete),
            error=lambda exc: self._failed(key, exc, obsolete))

    def _loaded(self, key: ThumbKey, image: QImage | object | None,
                 obsolete: threading.Event) -> None:
        if obsolete is self._generation:
            self._pending.discard(key)
            self._asked.pop(key, None)
        if image is _SKIPPED:
            if obsolete is self._generation:
                # Were it on screen after all (not repainted meanwhile), this repaints it,
                # and painting asks for it again.
                self.ready.emit(key)
            return
        if not isinstance(image, QImage):
            return
        pixmap = QPixmap.fromImage(image)
        if pixmap.isNull():  # no memory for it, say: the tile says it cannot show it
            self._failed(key, ValueError("cannot display the thumbnail"), obsolete)
            return
        self._pixmaps[key] = pixmap
        while len(self._pixmaps) > _KEEP:
            self._pixmaps.popitem(last=False)
        self.ready.emit(key)

    def _failed(self, key: ThumbKey, exc: BaseException, obsolete: threading.Event) -> None:
        if obsolete is self._generation:
            self._pending.discard(key)
            self._asked.pop(key, None)
        self._broken[key] = str(exc)
        self.failed.emit(key, str(exc))
