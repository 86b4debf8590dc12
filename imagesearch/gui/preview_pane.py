"""The selected result, larger, with what we know about it and what you can do with it."""

from __future__ import annotations

import os
import sys
import urllib.parse
from datetime import datetime
from pathlib import Path

from PySide6.QtCore import QProcess, QRectF, QSize, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QGuiApplication, QPainter, QPaintEvent, QPixmap
from PySide6.QtWidgets import (
    QFormLayout,
    QGridLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from imagesearch.domain import SearchHit
from imagesearch.gui.result_delegate import draw_box
from imagesearch.gui.results_model import describe_score, relative_box

PREVIEW_SIZE = 768


def human_size(n: int | None) -> str:
    if n is None:
        return "—"
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def reveal_in_file_manager(path: Path) -> None:
    """Show the file selected in the platform's file manager (its folder on Linux)."""
    if sys.platform == "darwin":
        QProcess.startDetached("open", ["-R", str(path)])
    elif sys.platform == "win32":
        QProcess.startDetached("explorer", [f"/select,{path}"])
    else:
        QDesktopServices.openUrl(file_url(path.parent))



def file_url(path: Path) -> QUrl:
    """A file:// URL from the path's bytes: Qt drops the surrogates that stand for a
    non-UTF-8 byte in a Linux file name, which would open another (or no) file."""
    if os.name == "posix":
        return QUrl.fromEncoded(b"file://" + urllib.parse.quote_from_bytes(
            os.fsencode(path)).encode("ascii"))
    return QUrl.fromLocalFile(str(path))

class ImageView(QWidget):
    """Draws a pixmap scaled to fit, and the match box over it when there is one."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._pixmap: QPixmap | None = None
        self._hit: SearchHit | None = None
        self.message = ""
        self.setMinimumSize(QSize(200, 160))
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def show_pixmap(self, hit: SearchHit | None, pixmap: QPixmap | None,
                    message: str = "") -> None:
        self._hit, self._pixmap, self.message = hit, pixmap, message
        self.update()

    def image_rect(self) -> QRectF | None:
        """Where the image is drawn, in widget coordinates."""
        if self._pixmap is None or self._pixmap.isNull():
            return None
        scaled = self._pixmap.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
        return QRectF((self.width() - scaled.width()) / 2, (self.height() - scaled.height()) / 2,
                      scaled.width(), scaled.height())

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        target = self.image_rect()
        if target is not None and self._pixmap is not None:
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            painter.drawPixmap(target, self._pixmap, QRectF(self._pixmap.rect()))
            draw_box(painter, target, relative_box(self._hit) if self._hit else None)
        elif self.message:
            painter.setPen(self.palette().color(self.palette().ColorRole.PlaceholderText))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter
                             | Qt.TextFlag.TextWordWrap, self.message)
        painter.end()


class PreviewPane(QWidget):
    """Larger image and details; emits ``more_like`` with the photo id."""

    more_like = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.hit: SearchHit | None = None
        self.view = ImageView(self)
        self.name = QLabel(self)
        self.name.setWordWrap(True)
        self.name.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        font = self.name.font()
        font.setBold(True)
        self.name.setFont(font)
        self.path = QLabel(self)
        self.path.setWordWrap(True)
        self.path.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.date, self.file_size, self.dims, self.score = (QLabel(self) for _ in range(4))
        self.details = QWidget(self)
        form = QFormLayout(self.details)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Folder", self.path)
        form.addRow("Date", self.date)
        form.addRow("Size", self.file_size)
        form.addRow("Pixels", self.dims)
        form.addRow("Score", self.score)
        self.open_button = QPushButton("Open", self)
        self.reveal_button = QPushButton("Show in folder", self)
        self.copy_button = QPushButton("Copy path", self)
        self.more_button = QPushButton("More like this", self)
        self.open_button.setToolTip("Open in the default viewer")
        self.open_button.clicked.connect(self.open_file)
        self.reveal_button.clicked.connect(self.reveal)
        self.copy_button.clicked.connect(self.copy_path)
        self.more_button.clicked.connect(self._more_like)
        buttons = QGridLayout()
        buttons.addWidget(self.open_button, 0, 0)
        buttons.addWidget(self.reveal_button, 0, 1)
        buttons.addWidget(self.copy_button, 1, 0)
        buttons.addWidget(self.more_button, 1, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.name)
        layout.addWidget(self.details)
        layout.addLayout(buttons)
        self.show_hit(None)

    def show_hit(self, hit: SearchHit | None) -> None:
        self.hit = hit
        for button in (self.open_button, self.reveal_button, self.copy_button,
                       self.more_button):
            button.setEnabled(hit is not None)
        self.details.setVisible(hit is not None)
        if hit is None:
            self.view.show_pixmap(None, None, "Select a result to see it here.")
            for label in (self.name, self.path, self.date, self.file_size, self.dims, self.score):
                label.clear()
            self.date.setToolTip("")
            return
        self.view.show_pixmap(hit, None, "Loading…")
        self.name.setText(hit.path.name)
        self.path.setText(str(hit.path.parent))
        date, explained = describe_date(hit)
        self.date.setText(date)
        self.date.setToolTip(explained)
        self.file_size.setText(human_size(hit.size))
        self.dims.setText(f"{hit.width} × {hit.height}" if hit.width and hit.height else "—")
        self.score.setText(describe_score(hit).removeprefix("score "))

    def set_image(self, hit: SearchHit, pixmap: QPixmap | None, error: str = "") -> None:
        """The decoded preview for ``hit`` arrived (ignored if the selection moved on)."""
        if self.hit is not hit:
            return
        self.view.show_pixmap(hit, pixmap, error)

    def open_file(self) -> None:
        if self.hit is not None:
            QDesktopServices.openUrl(file_url(self.hit.path))

    def reveal(self) -> None:
        if self.hit is not None:
            reveal_in_file_manager(self.hit.path)

    def copy_path(self) -> None:
        if self.hit is not None:
            QGuiApplication.clipboard().setText(str(self.hit.path))

    def _more_like(self) -> None:
        if self.hit is not None:
            self.more_like.emit(self.hit.photo_id)


def describe_date(hit: SearchHit) -> tuple[str, str]:
    """The preview's date and its tooltip: when the photo was taken, or else when its file
    last changed, said as such (scans and edited copies often carry no date taken)."""
    if hit.captured_at is not None:
        return hit.captured_at.strftime("%Y-%m-%d %H:%M"), "When the photo was taken"
    # Archive tools may zero a file's time; a time before 1970 is as unlikely to be true.
    if hit.mtime is not None and hit.mtime > 0:
        try:
            changed = datetime.fromtimestamp(hit.mtime)
        except (OverflowError, OSError, ValueError):
            return "unknown", ""
        return (f"{changed:%Y-%m-%d %H:%M} (file modified)",
                "The photo records no date taken; this is when its file last changed")
    return "unknown", ""
