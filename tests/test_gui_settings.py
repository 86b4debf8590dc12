"""Settings: the dialog, persistence through Settings.save/load, and restored window state."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication

from imagesearch.config import Settings
from imagesearch.gui.settings_dialog import SettingsDialog
from tests.tiny_model import TINY_MODEL_ID

if TYPE_CHECKING:
    from tests.gui_fixtures import GuiDriver, WindowFactory

pytest_plugins = ["tests.gui_fixtures"]


def test_settings_dialog_changes_persist(qtbot: Any, gui: GuiDriver,
                                         photo_dir: Path) -> None:
    window = gui.indexed(photo_dir)
    seen: dict[str, Any] = {}

    def fill() -> None:
        dialog = QApplication.activeModalWidget()
        assert isinstance(dialog, SettingsDialog)
        seen["models"] = [dialog.model.itemData(i) for i in range(dialog.model.count())]
        seen["devices"] = [dialog.device.itemText(i) for i in range(dialog.device.count())]
        seen["storage"] = [dialog.storage.itemData(i) for i in range(dialog.storage.count())]
        seen["storage_now"] = dialog.storage.currentData()
        # In a compact library the detailed mode cannot be chosen.
        dialog.features.setCurrentIndex(dialog.features.findData("detailed"))
        dialog.storage.setCurrentIndex(dialog.storage.findData("compact"))
        seen["features_in_compact"] = dialog.features.currentData()
        detailed = dialog.features.model().item(dialog.features.findData("detailed"))
        seen["detailed_enabled"] = detailed.isEnabled()
        dialog.storage.setCurrentIndex(dialog.storage.findData("standard"))
        seen["detailed_enabled_after"] = detailed.isEnabled()
        dialog.features.setCurrentIndex(dialog.features.findData("compact"))
        dialog.top_k.setValue(3)
        dialog.thumb.setValue(128)
        dialog.accept()

    QTimer.singleShot(50, fill)
    window.open_settings()
    assert TINY_MODEL_ID in seen["models"] and len(seen["models"]) > 1
    assert seen["devices"] == ["auto", "cpu", "cuda", "mps"]
    assert seen["storage"] == ["standard", "compact"] and seen["storage_now"] == "standard"
    assert seen["features_in_compact"] == "compact" and not seen["detailed_enabled"]
    assert seen["detailed_enabled_after"]
    saved = Settings.load(window.settings.library_dir)
    assert (saved.top_k, saved.thumbnail_size, saved.model_id) == (3, 128, TINY_MODEL_ID)
    assert window.grid.delegate.thumb_size == 128
    window.search_bar.edit.setText("anything")
    window.run_search()
    gui.wait_results(window)
    assert window.model.rowCount() == 3


def test_cancelled_dialog_changes_nothing(qtbot: Any, make_window: WindowFactory) -> None:
    window = make_window()
    before = window.settings

    def cancel() -> None:
        dialog = QApplication.activeModalWidget()
        assert isinstance(dialog, SettingsDialog)
        dialog.top_k.setValue(999)
        dialog.reject()

    QTimer.singleShot(50, cancel)
    window.open_settings()
    assert window.settings == before
    assert not (before.library_dir / "settings.json").exists()


def test_choosing_a_missing_model_reopens_and_offers_it(qtbot: Any,
                                                        make_window: WindowFactory) -> None:
    window = make_window()
    other = "ViT-B-32/laion2b_s34b_b79k"
    window.apply_settings(window.settings.with_changes(model_id=other))
    qtbot.waitUntil(lambda: window.model_setup.isVisible(), timeout=20_000)
    assert other in window.model_setup.text.text()
    qtbot.waitUntil(lambda: window.status.model.text() == f"Model: {other}", timeout=20_000)
    assert Settings.load(window.settings.library_dir).model_id == other


def test_window_geometry_panels_and_history_come_back(
        qtbot: Any, make_window: WindowFactory, tmp_path: Path) -> None:
    state = QSettings(str(tmp_path / "state.ini"), QSettings.Format.IniFormat)
    first = make_window(state=state)
    first.library_dock.hide()
    qtbot.waitUntil(lambda: first.minimumSize().width() < 700)  # the layout catches up
    first.resize(700, 520)  # inside the offscreen screen (800 × 600)
    qtbot.waitUntil(lambda: (first.width(), first.height()) == (700, 520))
    first.splitter.setSizes([500, 300])
    first.search_bar.edit.remember("red car")
    first.search_bar.edit.remember("sunset over water")
    sizes = first.splitter.sizes()
    first.close()
    assert (tmp_path / "state.ini").is_file()

    second = make_window(settings=first.settings,
                         state=QSettings(str(tmp_path / "state.ini"),
                                         QSettings.Format.IniFormat))
    assert (second.width(), second.height()) == (700, 520)
    assert not second.library_dock.isVisible()
    assert second.splitter.sizes() == sizes
    assert second.search_bar.edit.history() == ["sunset over water", "red car"]


def test_choosing_ames_reopens_the_library_and_other_matching_changes_do_not(
        tmp_path: Path) -> None:
    from imagesearch.gui.main_window import _reopen_needed

    base = Settings(library_dir=tmp_path, model_id=TINY_MODEL_ID)
    # AMES's re-ranker, descriptors and backfill are built when the library opens.
    assert _reopen_needed(base, base.with_changes(rerank="ames"))
    assert _reopen_needed(base.with_changes(rerank="ames"), base)
    ames = base.with_changes(rerank="ames")
    assert _reopen_needed(ames, ames.with_changes(ames_model="fp"))
    assert _reopen_needed(base, base.with_changes(local_features="detailed"))
    assert _reopen_needed(base, base.with_changes(storage="compact"))
    # Read at each search: no reopening.
    assert not _reopen_needed(base, base.with_changes(rerank="off"))
    assert not _reopen_needed(base, base.with_changes(ames_model="fp"))
    assert not _reopen_needed(base, base.with_changes(shortlist=300, top_k=50))
