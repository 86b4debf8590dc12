"""The settings dialog: model, device, results per query, thumbnails, object matching."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from imagesearch.config import Settings
from imagesearch.domain import ModelInfo

DEVICES = ("auto", "cpu", "cuda", "mps")

# (setting value, label) for finding the same object in the results of an image query.
OBJECT_MATCHING = (
    ("spatial", "Match details (spatial verification; no download)"),
    ("ames", "Match details with AMES (learned; needs its weights, best on a GPU)"),
    ("off", "Off: overall look only"),
)
STORAGE = (
    ("standard", "Standard: exact vectors and an index of photo details"),
    ("compact", "Compact: at most 2 KB a photo, for very large archives"),
)
LOCAL_FEATURES = (
    ("compact", "Compact: about 2 KB a photo"),
    ("detailed", "Detailed: about 18 KB a photo, finds smaller objects"),
    ("off", "Off: no search by details"),
)


def _combo(parent: QWidget, choices: Sequence[tuple[str, str]], current: str) -> QComboBox:
    box = QComboBox(parent)
    for value, label in choices:
        box.addItem(label, value)
    box.setCurrentIndex(max(box.findData(current), 0))
    return box


class SettingsDialog(QDialog):
    """Edits a copy of Settings; ``settings()`` gives the edited copy."""

    def __init__(self, settings: Settings, models: Sequence[ModelInfo],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self._base = settings
        self._models = list(models)
        self.model = QComboBox(self)
        ids = [m.id for m in self._models]
        if settings.model_id not in ids:
            self._models.insert(0, ModelInfo(settings.model_id, "", "", installed=False))
        for m in self._models:
            mark = "" if m.installed else "  (not downloaded)"
            default = "  — default" if m.is_default else ""
            self.model.addItem(f"{m.id}{default}{mark}", m.id)
        self.model.setCurrentIndex(self.model.findData(settings.model_id))
        self.model_info = QLabel(self)
        self.model_info.setWordWrap(True)
        self.model.currentIndexChanged.connect(self._show_model_info)
        self.device = QComboBox(self)
        self.device.addItems(list(DEVICES))
        current = self.device.findText(settings.device)
        self.device.setCurrentIndex(max(current, 0))
        self.top_k = QSpinBox(self)
        self.top_k.setRange(1, 10_000)
        self.top_k.setValue(settings.top_k)
        self.thumb = QSpinBox(self)
        self.thumb.setRange(64, 512)
        self.thumb.setSingleStep(32)
        self.thumb.setSuffix(" px")
        self.thumb.setValue(settings.thumbnail_size)
        self.matching = _combo(self, OBJECT_MATCHING, settings.rerank)
        self.matching.setToolTip("After an image query's first results, check the best "
                                 "of them for the very object in your image, move those "
                                 "up and outline where it is.")
        self.features = _combo(self, LOCAL_FEATURES, settings.local_features)
        self.features.setToolTip("What the library keeps of each photo's details. "
                                 "Changing it goes through the library once more.")
        self.storage = _combo(self, STORAGE, settings.storage)
        self.storage.setToolTip(
            "Compact keeps each photo in at most 2 KB: its vector as 128-byte codes "
            "(learned once the library has 5,000 photos), 211 details and no index of "
            "them, so search by image starts from the model's results. Search by the "
            "overall look becomes approximate: on test vectors it finds 6 or 7 of the "
            "exact top 10. Back to standard, the vectors stay as approximate as their "
            "codes (new and changed photos get exact ones). AMES cannot be used.")
        self.storage.currentIndexChanged.connect(self._storage_changed)
        self._storage_changed()
        form = QFormLayout()
        form.addRow("Model", self.model)
        form.addRow("", self.model_info)
        form.addRow("Device", self.device)
        form.addRow("Results per query", self.top_k)
        form.addRow("Thumbnail size", self.thumb)
        form.addRow("Find the same object", self.matching)
        form.addRow("Photo details kept", self.features)
        form.addRow("Library storage", self.storage)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        note = QLabel("A different model, device, detail or storage setting reopens the "
                      "library; a new model, detail or storage setting goes through the "
                      "photos again.", self)
        note.setWordWrap(True)
        layout.addWidget(note)
        layout.addWidget(buttons)
        self._show_model_info()

    def _storage_changed(self) -> None:
        """A compact library keeps 211 details a photo and no AMES descriptors: the
        detailed mode and AMES cannot be chosen there."""
        compact = self.storage.currentData() == "compact"
        for box, value, instead in ((self.features, "detailed", "compact"),
                                    (self.matching, "ames", "spatial")):
            model = box.model()
            item = model.item(box.findData(value)) \
                if isinstance(model, QStandardItemModel) else None
            if item is not None:
                item.setEnabled(not compact)
            if compact and box.currentData() == value:
                box.setCurrentIndex(box.findData(instead))

    def _show_model_info(self) -> None:
        idx = self.model.currentIndex()
        info = self._models[idx] if 0 <= idx < len(self._models) else None
        self.model_info.setText(info.description if info else "")

    def settings(self) -> Settings:
        return self._base.with_changes(
            model_id=str(self.model.currentData()), device=self.device.currentText(),
            top_k=self.top_k.value(), thumbnail_size=self.thumb.value(),
            rerank=str(self.matching.currentData()),
            local_features=str(self.features.currentData()),
            storage=str(self.storage.currentData()))
