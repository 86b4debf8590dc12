"""The results of one query as a Qt list model; thumbnails come from the loader on demand."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QAbstractListModel, QModelIndex, QObject, QPersistentModelIndex, Qt
from PySide6.QtGui import QPixmap

from imagesearch.domain import SearchHit
from imagesearch.gui.thumbnails import ThumbKey, ThumbnailLoader

HitRole = Qt.ItemDataRole.UserRole + 1
ScoreRole = Qt.ItemDataRole.UserRole + 2
BoxRole = Qt.ItemDataRole.UserRole + 3
ThumbErrorRole = Qt.ItemDataRole.UserRole + 4
TileRole = Qt.ItemDataRole.UserRole + 5

RelativeBox = tuple[float, float, float, float]  # x, y, w, h as fractions of the photo


@dataclass(frozen=True, slots=True)
class Tile:
    """What painting a tile needs, in one call: each call from the delegate into the
    model crosses from C++ to Python and back (tens of microseconds), and a screen of
    tiles is painted many times a second while scrolling."""

    name: str
    score: float
    pixmap: QPixmap | None
    box: RelativeBox | None
    error: str | None


def relative_box(hit: SearchHit) -> RelativeBox | None:
    """The hit's match box as fractions of the photo, for drawing at any size."""
    if hit.box is None or not hit.width or not hit.height:
        return None
    return hit.box.relative(hit.width, hit.height)


def describe_score(hit: SearchHit) -> str:
    """'score 0.812', plus what the re-rank stage found, for tooltips and the preview."""
    text = f"score {hit.score:.3f}"
    if hit.rerank_score is not None:
        text += (f" · {hit.rerank_score:.0f} matching details" if hit.box is not None
                 else " · not verified")
    return text

Index = QModelIndex | QPersistentModelIndex


class ResultsModel(QAbstractListModel):
    """Read-only list of SearchHit, best first."""

    def __init__(self, thumbnails: ThumbnailLoader, thumb_size: int,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._hits: list[SearchHit] = []
        self._row_of: dict[ThumbKey, int] = {}
        self._thumbs = thumbnails
        self._thumb_size = thumb_size
        thumbnails.ready.connect(self._thumb_changed)
        thumbnails.failed.connect(lambda key, _reason: self._thumb_changed(key))

    @property
    def thumb_size(self) -> int:
        return self._thumb_size

    def set_thumb_size(self, size: int) -> None:
        self.set_hits(self._hits, size)

    def set_hits(self, hits: Sequence[SearchHit], thumb_size: int | None = None) -> None:
        self.beginResetModel()
        self._thumbs.reset()
        if thumb_size is not None:
            self._thumb_size = thumb_size
        self._hits = list(hits)
        self._row_of = {self._key(h): row for row, h in enumerate(self._hits)}
        self.endResetModel()

    def hits(self) -> list[SearchHit]:
        return list(self._hits)

    def hit(self, row: int) -> SearchHit | None:
        return self._hits[row] if 0 <= row < len(self._hits) else None

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._hits)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._hits):
            return None
        hit = self._hits[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return hit.path.name
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{hit.path.name}\n{describe_score(hit)}\n{hit.path.parent}"
        if role == Qt.ItemDataRole.DecorationRole:
            return self._thumbs.pixmap(self._key(hit))
        if role == HitRole:
            return hit
        if role == ScoreRole:
            return hit.score
        if role == BoxRole:
            return relative_box(hit)
        if role == ThumbErrorRole:
            return self._thumbs.error(self._key(hit))
        if role == TileRole:
            key = self._key(hit)
            pixmap = self._thumbs.pixmap(key)
            return Tile(hit.path.name, hit.score, pixmap,
                        relative_box(hit) if pixmap is not None else None,
                        None if pixmap is not None else self._thumbs.error(key))
        if role == Qt.ItemDataRole.AccessibleTextRole:
            return f"{hit.path.name}, score {hit.score:.2f}"
        return None

    def _key(self, hit: SearchHit) -> ThumbKey:
        return (hit.path, hit.mtime, self._thumb_size)

    def _thumb_changed(self, key: object) -> None:
        row = self._row_of.get(key)  # type: ignore[call-overload]
        if row is not None:
            idx = self.index(row)
            self.dataChanged.emit(idx, idx, [Qt.ItemDataRole.DecorationRole])
