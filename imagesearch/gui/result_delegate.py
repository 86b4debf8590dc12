"""Paints one result tile: thumbnail, match box, file name, and the score on hover."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPalette, QPen, QPixmap
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem, QWidget

from imagesearch.gui.results_model import RelativeBox, Tile, TileRole
from imagesearch.gui.theme import box_pen_color

_PAD = 6


def box_rect(target: QRectF, box: RelativeBox) -> QRectF:
    """A relative match box (x, y, w, h) mapped onto the rectangle the image is drawn in."""
    x, y, w, h = box
    return QRectF(target.x() + x * target.width(), target.y() + y * target.height(),
                  w * target.width(), h * target.height())


def draw_box(painter: QPainter, target: QRectF, box: RelativeBox | None) -> None:
    if box is None:
        return
    painter.save()
    pen = QPen(box_pen_color())
    pen.setWidthF(2.0)
    painter.setPen(pen)
    painter.setBrush(Qt.BrushStyle.NoBrush)
    painter.drawRect(box_rect(target, box))
    painter.restore()


class ResultDelegate(QStyledItemDelegate):
    """Uniform square tiles sized from the thumbnail size."""

    def __init__(self, thumb_size: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.thumb_size = thumb_size

    def sizeHint(self, option: QStyleOptionViewItem,
                 index: QModelIndex | QPersistentModelIndex) -> QSize:
        return self.tile_size(option.fontMetrics)

    def tile_size(self, metrics: QFontMetrics) -> QSize:
        return QSize(self.thumb_size + 2 * _PAD, self.thumb_size + 2 * _PAD + metrics.height() + 4)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        rect: QRect = option.rect
        state = option.state
        palette: QPalette = option.palette
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        selected = bool(state & QStyle.StateFlag.State_Selected)
        hovered = bool(state & QStyle.StateFlag.State_MouseOver)
        if selected or hovered:
            color = QColor(palette.color(QPalette.ColorRole.Highlight))
            if not selected:
                color.setAlpha(60)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(color)
            painter.drawRoundedRect(rect.adjusted(1, 1, -1, -1), 6, 6)

        # Centred: the grid may hand out cells wider than a tile, to spread a row evenly.
        square = QRect(rect.x() + (rect.width() - self.thumb_size) // 2, rect.y() + _PAD,
                       self.thumb_size, self.thumb_size)
        tile = index.data(TileRole)
        if not isinstance(tile, Tile):
            tile = Tile("", 0.0, None, None, None)
        pix = tile.pixmap
        if isinstance(pix, QPixmap) and not pix.isNull():
            scaled = pix.size().scaled(square.size(), Qt.AspectRatioMode.KeepAspectRatio)
            target = QRectF(square.x() + (square.width() - scaled.width()) / 2,
                            square.y() + (square.height() - scaled.height()) / 2,
                            scaled.width(), scaled.height())
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            painter.drawPixmap(target, pix, QRectF(pix.rect()))
            draw_box(painter, target, tile.box)
        else:
            painter.setPen(Qt.PenStyle.NoPen)
            placeholder = QColor(palette.color(QPalette.ColorRole.Mid))
            placeholder.setAlpha(70)
            painter.setBrush(placeholder)
            painter.drawRoundedRect(square, 4, 4)
            if tile.error:
                painter.setPen(palette.color(QPalette.ColorRole.PlaceholderText))
                painter.drawText(square, Qt.AlignmentFlag.AlignCenter, "cannot show")

        text_rect = QRect(rect.x() + _PAD, square.bottom() + 3, rect.width() - 2 * _PAD,
                          rect.bottom() - square.bottom() - 3)
        role = QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text
        painter.setPen(palette.color(role))
        name = tile.name
        fm = option.fontMetrics
        painter.drawText(text_rect, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop,
                         fm.elidedText(name, Qt.TextElideMode.ElideMiddle, text_rect.width()))

        if hovered or selected:
            self._paint_score(painter, square, tile.score, fm)
        painter.restore()

    @staticmethod
    def _paint_score(painter: QPainter, square: QRect, score: float, fm: QFontMetrics) -> None:
        text = f"{score:.3f}"
        width = fm.horizontalAdvance(text) + 10
        height = fm.height() + 4
        badge = QRect(square.right() - width - 2, square.y() + 2, width, height)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 170))
        painter.drawRoundedRect(badge, 4, 4)
        painter.setPen(QColor(255, 255, 255))
        painter.drawText(badge, Qt.AlignmentFlag.AlignCenter, text)
