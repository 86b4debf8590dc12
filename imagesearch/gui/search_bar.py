"""The search bar: a description with history, an image chip, and the mix between them."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QSize, QStringListModel, Qt, Signal
from PySide6.QtGui import (
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
    QImage,
    QImageReader,
    QKeyEvent,
    QKeySequence,
    QPixmap,
)
from PySide6.QtWidgets import (
    QCompleter,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QToolButton,
    QWidget,
)

from imagesearch.domain import Query
from imagesearch.gui import mime
from imagesearch.gui.workers import TaskRunner

HISTORY_LIMIT = 50
CHIP_ICON = 28


class HistoryLineEdit(QLineEdit):
    """A line edit that remembers submitted text (Up/Down walk it) and pastes images."""

    image_pasted = Signal(object)  # Path | bytes

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._history: list[str] = []
        self._cursor = 0
        self._model = QStringListModel(self)
        completer = QCompleter(self._model, self)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.setCompleter(completer)

    def history(self) -> list[str]:
        return list(self._history)

    def set_history(self, items: list[str]) -> None:
        self._history = [i for i in items if i.strip()][:HISTORY_LIMIT]
        self._model.setStringList(self._history)
        self._cursor = -1

    def remember(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        self.set_history([text] + [h for h in self._history if h != text])

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.matches(QKeySequence.StandardKey.Paste):
            source = mime.image_query(QGuiApplication.clipboard().mimeData())
            if source is not None:
                self.image_pasted.emit(source)
                return
        popup = self.completer().popup()
        if (popup is None or not popup.isVisible()) and self._history:
            if event.key() == Qt.Key.Key_Up:
                self._cursor = min(self._cursor + 1, len(self._history) - 1)
                self.setText(self._history[self._cursor])
                return
            if event.key() == Qt.Key.Key_Down:
                self._cursor = max(self._cursor - 1, -1)
                self.setText(self._history[self._cursor] if self._cursor >= 0 else "")
                return
        super().keyPressEvent(event)

    # Drops on the text box are image queries, never the file's URL as text.
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if mime.offers_image(event.mimeData()):
            event.acceptProposedAction()
        else:
            super().dragEnterEvent(event)

    def dropEvent(self, event: QDropEvent) -> None:
        source = mime.image_query(event.mimeData())
        if source is not None:
            event.acceptProposedAction()
            self.image_pasted.emit(source)
        else:
            super().dropEvent(event)


def chip_image(source: Path | bytes, size: int) -> QImage:
    """Worker side: a small preview of the query image, decoded at the reduced size."""
    if isinstance(source, Path):
        reader = QImageReader(str(source))
    else:
        buffer = QBuffer()
        buffer.setData(QByteArray(source))
        buffer.open(QIODevice.OpenModeFlag.ReadOnly)
        reader = QImageReader(buffer)
    reader.setAutoTransform(True)
    full = reader.size()
    if full.isValid():
        reader.setScaledSize(full.scaled(QSize(size, size), Qt.AspectRatioMode.KeepAspectRatio))
    return reader.read()


class ImageChip(QFrame):
    """Shows the query image with a button that removes it."""

    removed = Signal()

    def __init__(self, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._runner = runner
        self._source: Path | bytes | None = None
        self.setObjectName("imageChip")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 2, 2, 2)
        layout.setSpacing(4)
        self.icon = QLabel(self)
        self.icon.setFixedSize(CHIP_ICON, CHIP_ICON)
        self.icon.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label = QLabel(self)
        self.close_button = QToolButton(self)
        self.close_button.setText("✕")
        self.close_button.setToolTip("Remove the image from the query")
        self.close_button.setAutoRaise(True)
        self.close_button.clicked.connect(self.removed)
        layout.addWidget(self.icon)
        layout.addWidget(self.label)
        layout.addWidget(self.close_button)

    def show_source(self, source: Path | bytes) -> None:
        self._source = source
        self.icon.clear()
        self._runner.submit("io", lambda: chip_image(source, CHIP_ICON),
                            done=lambda image: self._show_icon(source, image))
        name = source.name if isinstance(source, Path) else "pasted image"
        metrics = self.label.fontMetrics()
        self.label.setText(metrics.elidedText(name, Qt.TextElideMode.ElideMiddle, 160))
        self.setToolTip(str(source) if isinstance(source, Path) else
                        f"Image data ({len(source) // 1024} KB)")


    def _show_icon(self, source: Path | bytes, image: QImage) -> None:
        if source is self._source and not image.isNull():
            self.icon.setPixmap(QPixmap.fromImage(image))


class SearchBar(QWidget):
    """Emits ``submitted`` when the user asks for a search."""

    submitted = Signal()
    image_changed = Signal()

    def __init__(self, runner: TaskRunner, image_weight: float = 0.5,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.image: Path | bytes | None = None
        self.chip = ImageChip(runner, self)
        self.chip.hide()
        self.chip.removed.connect(self.clear_image)
        self.edit = HistoryLineEdit(self)
        self.edit.setPlaceholderText("Describe a photo, or drop / paste an image…")
        self.edit.setClearButtonEnabled(True)
        self.edit.returnPressed.connect(self._submit)
        self.edit.image_pasted.connect(self.set_image)
        self.weight = QSlider(Qt.Orientation.Horizontal, self)
        self.weight.setRange(0, 100)
        self.weight.setValue(round(image_weight * 100))
        self.weight.setFixedWidth(90)
        self.weight.setToolTip("Mix: left favours the text, right favours the image")
        self.weight.valueChanged.connect(self._weight_changed)
        self.weight_label = QLabel("text ◂▸ image", self)
        self.button = QPushButton("Search", self)
        self.button.clicked.connect(self._submit)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.chip)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.weight_label)
        layout.addWidget(self.weight)
        layout.addWidget(self.button)
        self._update_mix_visibility()
        self.edit.textChanged.connect(self._update_mix_visibility)

    def set_image(self, source: Path | bytes) -> None:
        """Put an image into the query and search at once."""
        self.image = source
        self.chip.show_source(source)
        self.chip.show()
        self._update_mix_visibility()
        self.image_changed.emit()
        self.submitted.emit()

    def clear_image(self) -> None:
        self.image = None
        self.chip.hide()
        self._update_mix_visibility()
        self.image_changed.emit()
        if self.edit.text().strip():
            self.submitted.emit()

    def image_weight(self) -> float:
        return self.weight.value() / 100.0

    def query(self, top_k: int) -> Query:
        return Query(text=self.edit.text().strip(), image=self.image,
                     image_weight=self.image_weight(), top_k=top_k)

    def _submit(self) -> None:
        self.edit.remember(self.edit.text())
        self.submitted.emit()

    def _weight_changed(self) -> None:
        if self.image is not None and self.edit.text().strip():
            self.submitted.emit()

    def _update_mix_visibility(self) -> None:
        both = self.image is not None and bool(self.edit.text().strip())
        self.weight.setVisible(both)
        self.weight_label.setVisible(both)
