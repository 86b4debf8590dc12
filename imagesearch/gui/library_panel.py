"""The library panel: folders and their counts, watching, indexing progress, failures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from imagesearch.domain import FolderInfo, IndexProgress, PhotoRecord
from imagesearch.gui import mime
from imagesearch.gui.status import count_text

PathRole = Qt.ItemDataRole.UserRole + 1


class LibraryPanel(QWidget):
    """Shows the library; every change the user asks for goes out as a signal."""

    add_requested = Signal()
    folders_dropped = Signal(list)  # list[Path]
    remove_requested = Signal(object)  # Path
    watch_toggled = Signal(object, bool)  # Path, on
    index_requested = Signal()
    pause_toggled = Signal(bool)
    cancel_requested = Signal()
    retry_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self._updating = False
        self.folders = QTreeWidget(self)
        self.folders.setHeaderLabels(["Folder", "Photos", "Watch"])
        self.folders.setRootIsDecorated(False)
        self.folders.setUniformRowHeights(True)
        header = self.folders.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.folders.itemChanged.connect(self._item_changed)
        self.folders.itemSelectionChanged.connect(self._selection_changed)

        self.add_button = QPushButton("Add folder…", self)
        self.add_button.setToolTip("Add a folder to the library (Ctrl+O), or drop one here")
        self.remove_button = QPushButton("Remove", self)
        self.remove_button.setEnabled(False)
        self.index_button = QPushButton("Index now", self)
        self.add_button.clicked.connect(self.add_requested)
        self.remove_button.clicked.connect(self._remove)
        self.index_button.clicked.connect(self.index_requested)
        row = QHBoxLayout()
        row.addWidget(self.add_button)
        row.addWidget(self.remove_button)
        row.addStretch(1)
        row.addWidget(self.index_button)

        self.progress = QProgressBar(self)
        self.progress_label = QLabel(self)
        self.progress_label.setWordWrap(True)
        self.pause_button = QPushButton("Pause", self)
        self.pause_button.setCheckable(True)
        self.pause_button.toggled.connect(self._pause_toggled)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.clicked.connect(self.cancel_requested)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.pause_button)
        progress_row.addWidget(self.cancel_button)
        self.progress_box = QWidget(self)
        box_layout = QVBoxLayout(self.progress_box)
        box_layout.setContentsMargins(0, 0, 0, 0)
        box_layout.addLayout(progress_row)
        box_layout.addWidget(self.progress_label)
        self.set_indexing(False)

        self.failures_box = QGroupBox("Could not be indexed", self)
        self.failures = QTreeWidget(self.failures_box)
        self.failures.setHeaderLabels(["File", "Reason"])
        self.failures.setRootIsDecorated(False)
        self.retry_button = QPushButton("Retry failed", self.failures_box)
        self.retry_button.clicked.connect(self.retry_requested)
        fail_layout = QVBoxLayout(self.failures_box)
        fail_layout.addWidget(self.failures)
        fail_layout.addWidget(self.retry_button, 0, Qt.AlignmentFlag.AlignRight)
        self.failures_box.hide()

        self.notice = QLabel(self)
        self.notice.setWordWrap(True)
        self.notice.setStyleSheet("color: #c0392b;")
        self.notice.hide()

        layout = QVBoxLayout(self)
        layout.addWidget(self.folders, 2)
        layout.addLayout(row)
        layout.addWidget(self.notice)
        layout.addWidget(self.progress_box)
        layout.addWidget(self.failures_box, 1)

    # Showing state -------------------------------------------------------------------------

    def set_folders(self, folders: Sequence[FolderInfo]) -> None:
        self._updating = True
        selected = self.selected_folder()
        self.folders.clear()
        for f in folders:
            counts = count_text(f.indexed_count) if f.indexed_count == f.photo_count else \
                f"{count_text(f.indexed_count)} / {count_text(f.photo_count)}"
            name = f.path.name or str(f.path)
            item = QTreeWidgetItem([name if f.online else f"{name} (offline)", counts, ""])
            item.setData(0, PathRole, f.path)
            tip = str(f.path) + ("" if f.online else "\nNot reachable now; its photos are kept.")
            item.setToolTip(0, tip)
            item.setToolTip(1, f"{f.indexed_count} indexed, {f.failed_count} failed, "
                               f"{f.photo_count} found")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(2, Qt.CheckState.Checked if f.watched else
                               Qt.CheckState.Unchecked)
            item.setToolTip(2, "Watch this folder for new and changed photos")
            self.folders.addTopLevelItem(item)
            if f.path == selected:
                item.setSelected(True)
            for part in f.offline_subfolders:
                child = QTreeWidgetItem(item, [f"{part.path.relative_to(f.path)} (offline)",
                                               "", ""])
                child.setData(0, PathRole, part.path)
                child.setToolTip(0, f"{part.path}\n{part.reason.capitalize()}; its photos "
                                    "are kept. Remove forgets them.")
                child.setSelected(part.path == selected)
            item.setExpanded(True)
        self.folders.setRootIsDecorated(any(f.offline_subfolders for f in folders))
        self._updating = False
        self._selection_changed()

    def show_notice(self, text: str) -> None:
        """A problem with the last thing asked (a folder that cannot be added…); "" hides it."""
        self.notice.setText(text)
        self.notice.setVisible(bool(text))

    def set_failures(self, records: Sequence[PhotoRecord]) -> None:
        self.failures.clear()
        for r in records:
            item = QTreeWidgetItem([r.path.name, r.error or "unknown error"])
            item.setToolTip(0, str(r.path))
            item.setToolTip(1, r.error or "")
            self.failures.addTopLevelItem(item)
        self.failures_box.setTitle(f"Could not be indexed ({len(records)})")
        self.failures_box.setVisible(bool(records))

    def set_indexing(self, running: bool) -> None:
        self.progress_box.setVisible(running)
        self.index_button.setEnabled(not running)
        if running:
            self.progress.setRange(0, 0)
            self.progress_label.setText("Scanning folders…")
        self.pause_button.blockSignals(True)
        self.pause_button.setChecked(False)
        self.pause_button.setText("Pause")
        self.pause_button.blockSignals(False)

    def show_progress(self, p: IndexProgress) -> None:
        if p.phase == "scanning" or p.total == 0:
            self.progress.setRange(0, 0)
            self.progress_label.setText(f"Scanning… {p.done} files found")
            return
        self.progress.setRange(0, p.total)
        self.progress.setValue(p.done)
        rate = f", {p.images_per_second:.1f} photos/s" if p.images_per_second else ""
        failed = f", {p.failed} failed" if p.failed else ""
        paused = " (paused)" if self.pause_button.isChecked() else ""
        # Backfills of an existing library have phases of their own.
        what = {"local features": "Details found for",
                "ames features": "AMES descriptors for"}.get(p.phase, "Indexed")
        self.progress_label.setText(f"{what} {p.done} of {p.total}{failed}{rate}{paused}")

    def selected_folder(self) -> Path | None:
        items = self.folders.selectedItems()
        return items[0].data(0, PathRole) if items else None

    # User actions --------------------------------------------------------------------------

    def _selection_changed(self) -> None:
        self.remove_button.setEnabled(self.selected_folder() is not None)

    def _remove(self) -> None:
        path = self.selected_folder()
        if path is not None:
            self.remove_requested.emit(path)

    def _item_changed(self, item: QTreeWidgetItem, column: int) -> None:
        if self._updating or column != 2:
            return
        self.watch_toggled.emit(item.data(0, PathRole),
                                item.checkState(2) == Qt.CheckState.Checked)

    def _pause_toggled(self, paused: bool) -> None:
        self.pause_button.setText("Resume" if paused else "Pause")
        if paused:
            self.progress_label.setText(self.progress_label.text() + " (paused)")
        self.pause_toggled.emit(paused)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if mime.folders(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        dropped = mime.folders(event.mimeData())
        if dropped:
            event.acceptProposedAction()
            self.folders_dropped.emit(dropped)
