"""Fixtures for the GUI tests: windows over a fresh library, and no worker left running."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything imports Qt

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QSettings, QThreadPool

from imagesearch.config import Settings
from imagesearch.gui.main_window import MainWindow

WindowFactory = Callable[..., MainWindow]

WAIT_MS = 60_000


def _python_threads() -> set[threading.Thread]:
    # Qt's pool threads show up as _DummyThread once they ran Python code, and live on
    # idle for a while; they are checked through the pools instead.
    return {t for t in threading.enumerate() if not isinstance(t, threading._DummyThread)}


@pytest.fixture
def gui_state(tmp_path: Path) -> QSettings:
    """Window state in a temp INI file, never the user's real settings."""
    return QSettings(str(tmp_path / "window-state.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def make_window(qtbot: Any, make_settings: Callable[..., Settings], gui_state: QSettings,
                shared_encoder: Any) -> Iterator[WindowFactory]:
    """Build main windows; each waits for its library to open and is closed after the test.

    Args of the factory: ``settings`` (default make_settings()), ``state`` (default the
    temp QSettings), ``load_model`` (True: load weights from disk like the app does;
    False: share the session's already loaded tiny model).
    """
    from imagesearch.services.context import build_context

    windows: list[MainWindow] = []
    threads_before = _python_threads()

    def factory(settings: Settings | None = None, state: QSettings | None = None,
                load_model: bool = False) -> MainWindow:
        settings = settings or make_settings()

        def context(s: Settings) -> Any:
            use_shared = not load_model and s.model_id == shared_encoder.model_id
            return build_context(s, encoder=shared_encoder if use_shared else None)

        window = MainWindow(settings, state or gui_state, context)
        qtbot.addWidget(window)
        window.show()
        windows.append(window)
        qtbot.waitUntil(lambda: window.library.status is not None, timeout=WAIT_MS)
        return window

    yield factory
    for window in windows:
        window.close()
        assert not window.runner.busy(), "a worker was still running after close"
        for name, pool in window.runner.pools.items():
            assert pool.activeThreadCount() == 0, f"pool {name} still has work"
    assert QThreadPool.globalInstance().activeThreadCount() == 0
    leaked = _python_threads() - threads_before
    assert not leaked, f"threads left running: {leaked}"


class GuiDriver:
    """Waits the GUI tests share, as a fixture so test modules import nothing from here."""

    def __init__(self, qtbot: Any, make_window: WindowFactory) -> None:
        self.qtbot = qtbot
        self.make_window = make_window

    def wait_indexed(self, window: MainWindow, count: int) -> None:
        """Until indexing has stopped and the status shows ``count`` photos indexed."""
        def done() -> bool:
            status = window.library.status
            return (not window.indexer.running and status is not None
                    and status.indexed_count == count)

        self.qtbot.waitUntil(done, timeout=WAIT_MS)

    def wait_results(self, window: MainWindow) -> None:
        self.qtbot.waitUntil(lambda: window.model.rowCount() > 0
                             and window.results.showing_grid, timeout=WAIT_MS)

    def indexed(self, photo_dir: Path, **kwargs: Any) -> MainWindow:
        """A window whose library holds ``photo_dir``, fully indexed."""
        window = self.make_window(**kwargs)
        window.library.add_folders([photo_dir])
        self.wait_indexed(window, len([p for p in photo_dir.rglob("*") if p.is_file()]))
        return window


@pytest.fixture
def gui(qtbot: Any, make_window: WindowFactory) -> GuiDriver:
    return GuiDriver(qtbot, make_window)
