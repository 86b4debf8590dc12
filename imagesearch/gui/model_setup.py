"""Missing model weights: say so, and offer a download (with progress) or a file to install."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from imagesearch.gui.workers import TaskRunner

if TYPE_CHECKING:
    from imagesearch.services.context import AppContext

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class DownloadCancelled(Exception):
    """Raised from the progress callback to stop a download; the service removes the partial."""


def split_model_files(files: Sequence[Path]) -> tuple[Path | None, Path | None]:
    """(checkpoint, config) from what the user picked; a .json is an open_clip config."""
    checkpoint = next((f for f in files if f.suffix.lower() in CHECKPOINT_SUFFIXES), None)
    config = next((f for f in files if f.suffix.lower() == ".json"), None)
    return checkpoint, config


class ModelSetup(QFrame):
    """A banner over the results, shown while the active model's weights are missing."""

    installed = Signal()
    message = Signal(str)

    def __init__(self, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("modelSetup")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self._runner = runner
        self._ctx: AppContext | None = None
        self.cancel_event = threading.Event()
        self.busy = False
        self.text = QLabel(self)
        self.text.setWordWrap(True)
        self.download_button = QPushButton("Download", self)
        self.install_button = QPushButton("Install from file…", self)
        self.cancel_button = QPushButton("Cancel", self)
        self.progress = QProgressBar(self)
        self.download_button.clicked.connect(self.download)
        self.install_button.clicked.connect(self._pick_files)
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.addWidget(self.download_button)
        row.addWidget(self.install_button)
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        row.addStretch(0)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text)
        layout.addLayout(row)
        self._set_busy(False)
        self.hide()

    def set_context(self, ctx: AppContext) -> None:
        self._ctx = ctx
        self.refresh()

    def refresh(self, reason: str = "") -> bool:
        """Show the banner if the weights are missing; returns whether they are present."""
        ctx = self._ctx
        if ctx is None:
            return False
        present = ctx.models.weights_present()
        if present and not reason:
            self.hide()
            return True
        info = next((m for m in ctx.models.models() if m.id == ctx.models.model_id), None)
        size = f" (about {info.size_bytes // 2**20} MB)" if info and info.size_bytes else ""
        meanwhile = ("Until then photos are indexed by their details, so searching by "
                     "image works; searching by description needs the model."
                     if ctx.indexing.can_index() else
                     "Searching and indexing need it; folders can be added meanwhile.")
        self.text.setText(
            f"<b>The model {ctx.models.model_id} is not on this computer.</b> {meanwhile} "
            f"Download it{size}, or install a checkpoint file you already have."
            + (f"<br>{reason}" if reason else ""))
        self.show()
        return False

    def download(self) -> None:
        ctx = self._ctx
        if ctx is None or self.busy:
            return
        self.cancel_event = threading.Event()
        cancel = self.cancel_event

        def work(report: Any) -> Path:
            def progress(done: int, total: int) -> None:
                if cancel.is_set():
                    raise DownloadCancelled("download cancelled")
                report((done, total))
            return ctx.models.download(progress=progress)

        self._set_busy(True)
        self.progress.setRange(0, 0)
        self._runner.submit("io", work, progress=self._progress, done=self._done,
                            error=self._failed)

    def cancel(self) -> None:
        self.cancel_event.set()

    def install(self, files: Sequence[Path]) -> None:
        ctx = self._ctx
        checkpoint, config = split_model_files(files)
        if ctx is None or self.busy:
            return
        if checkpoint is None:
            self._failed(ValueError("Pick a checkpoint file (.safetensors, .bin, .pt or .pth)."))
            return
        self._set_busy(True)
        self.progress.setRange(0, 0)
        self._runner.submit("io", lambda: ctx.models.install(checkpoint, None, config),
                            done=self._done, error=self._failed)

    def _pick_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Install model weights", str(Path.home()),
            "Model files (*.safetensors *.bin *.pt *.pth *.json);;All files (*)")
        if files:
            self.install([Path(f) for f in files])

    def _progress(self, value: tuple[int, int]) -> None:
        done, total = value
        if total:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * done / total))
            self.progress.setFormat(f"{done / 2**20:.0f} of {total / 2**20:.0f} MB")
        else:
            self.progress.setRange(0, 0)

    def _done(self, _result: object) -> None:
        self._set_busy(False)
        if self.refresh():
            self.message.emit("Model installed.")
            self.installed.emit()

    def _failed(self, exc: BaseException) -> None:
        self._set_busy(False)
        text = "Download cancelled." if isinstance(exc, DownloadCancelled) else str(exc)
        self.refresh(text)
        self.message.emit(text)

    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        self.download_button.setEnabled(not busy)
        self.install_button.setEnabled(not busy)
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)
        if not busy:
            self.progress.resetFormat()
