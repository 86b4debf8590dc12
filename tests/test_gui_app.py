"""Start-up: heavy imports stay out of the GUI's start, main.py runs, the palette is followed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette

from imagesearch.gui.app import parse_args, run
from imagesearch.gui.main_window import MainWindow
from imagesearch.gui.theme import dark_palette, is_dark

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "open_clip", "faiss", "sqlalchemy", "numpy", "PIL")


def test_the_window_modules_import_nothing_heavy() -> None:
    code = ("import sys, imagesearch.gui.app; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert out.stdout.strip() == ""


def test_main_py_help() -> None:
    out = subprocess.run([sys.executable, "main.py", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert "--library" in out.stdout


def test_run_opens_the_library_given_and_quits_cleanly(qtbot: Any, tmp_path: Path,
                                                       models_dir: Path) -> None:
    library = tmp_path / "my library"
    shown: list[MainWindow] = []
    icon_sizes: set[int] = set()

    def on_shown(window: MainWindow) -> None:
        shown.append(window)
        icon_sizes.update(s.width() for s in window.windowIcon().availableSizes())
        qtbot.waitUntil(lambda: window.library.status is not None, timeout=30_000)
        window.quit_action.trigger()

    assert run(["--library", str(library), "--models", str(models_dir)], on_shown) == 0
    window = shown[0]
    assert {16, 256} <= icon_sizes  # the app's icon, read from the package
    assert window.settings.library_dir == library.resolve()
    assert (library / "catalog.sqlite3").is_file()
    assert (library / "window.ini").is_file()  # geometry saved on the way out
    assert not window.runner.busy()
    assert parse_args([]).library is None


def test_palette_darkness_is_detected() -> None:
    assert is_dark(dark_palette())
    light = QPalette(QColor(Qt.GlobalColor.white))
    light.setColor(QPalette.ColorRole.WindowText, QColor(Qt.GlobalColor.black))
    assert not is_dark(light)


def test_sigterm_closes_the_window_as_quit_does(tmp_path: Path, models_dir: Path) -> None:
    """A logout or `kill` ends the app cleanly: exit status 0, window state written."""
    import signal
    import time

    library = tmp_path / "library"
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--library", str(library), "--models", str(models_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    try:
        deadline = time.monotonic() + 60
        # The catalog is opened once the window is up (and the handler installed).
        while not (library / "catalog.sqlite3").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert (library / "window.ini").is_file()
