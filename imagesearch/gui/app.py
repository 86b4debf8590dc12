"""Application start-up: the QApplication, settings, window state, and the main window."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import (
    QEvent,
    QMessageLogContext,
    QObject,
    QSettings,
    QtMsgType,
    qInstallMessageHandler,
)
from PySide6.QtWidgets import QApplication

from imagesearch.config import APP_NAME, Settings
from imagesearch.gui.app_icon import DESKTOP_ID, app_icon
from imagesearch.gui.main_window import ContextFactory, MainWindow
from imagesearch.gui.platform_check import EXIT_NO_WINDOW, explain
from imagesearch.gui.stop_signals import StopSignals
from imagesearch.gui.theme import apply_theme


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=APP_NAME, description="Find photos in your folders.")
    parser.add_argument("--library", type=Path, metavar="DIR",
                        help="library folder (catalog, index, thumbnails); default: "
                             "$IMAGESEARCH_HOME or the user data folder")
    parser.add_argument("--models", type=Path, metavar="DIR",
                        help="model weights folder; default: $IMAGESEARCH_MODELS or the cache")
    return parser.parse_args(list(argv))


def load_settings(args: argparse.Namespace) -> Settings:
    library = args.library.expanduser().resolve() if args.library else None
    overrides = {"models_dir": args.models.expanduser().resolve()} if args.models else {}
    return Settings.load(library, **overrides)


def window_state(settings: Settings) -> QSettings:
    """Window geometry and panel state, kept per library next to its catalog."""
    path = settings.library_dir / "window.ini"
    return QSettings(str(path), QSettings.Format.IniFormat)


class _FirstPaint(QObject):
    """Calls back once, when the window has painted for the first time."""

    def __init__(self, callback: Callable[[MainWindow], None]) -> None:
        super().__init__()
        self._callback: Callable[[MainWindow], None] | None = callback

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Paint and self._callback is not None \
                and isinstance(watched, MainWindow):
            callback, self._callback = self._callback, None
            callback(watched)
        return False


def start_qt() -> QApplication:
    """The QApplication; if Qt cannot open a display, say why and what to install.

    Qt reports a plugin it cannot load as a fatal message and then aborts the process;
    the handler speaks first and exits cleanly instead.
    """
    said: list[str] = []

    def on_message(kind: QtMsgType, _context: QMessageLogContext, message: str) -> None:
        if kind == QtMsgType.QtFatalMsg:
            sys.stderr.write(explain([*said, message]) + "\n")
            sys.stderr.flush()
            os._exit(EXIT_NO_WINDOW)
        if kind != QtMsgType.QtDebugMsg:
            said.append(message)

    previous = qInstallMessageHandler(on_message)
    try:
        app = QApplication([sys.argv[0]])
    finally:
        qInstallMessageHandler(previous)
    for message in said:  # started after all: Qt's warnings, as it would have printed them
        sys.stderr.write(message + "\n")
    return app


def create_window(settings: Settings, state: QSettings | None = None,
                  context_factory: ContextFactory | None = None) -> MainWindow:
    return MainWindow(settings, state or window_state(settings), context_factory)


def run(argv: Sequence[str] | None = None,
        on_shown: Callable[[MainWindow], None] | None = None) -> int:
    """Start the GUI; returns the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app = QApplication.instance() or start_qt()
    assert isinstance(app, QApplication)
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(APP_NAME)
    app.setApplicationDisplayName("imagesearch")
    app.setDesktopFileName(DESKTOP_ID)
    app.setWindowIcon(app_icon())
    apply_theme(app)
    settings = load_settings(args)
    window = create_window(settings)
    app.aboutToQuit.connect(window.shutdown)  # quitting without closing the window, too
    watcher = _FirstPaint(on_shown) if on_shown is not None else None
    if watcher is not None:
        window.installEventFilter(watcher)
    window.show()
    stop = StopSignals(window.close)
    try:
        code = int(app.exec())
    finally:
        stop.restore()
    if window.unfinished:
        # Work stuck in a read from a stalled share would otherwise hold the process at
        # exit (Qt's pools wait for their threads). Everything committed is safe on disk:
        # the catalog is SQLite in WAL mode and survives a process that simply stops.
        logging.getLogger(__name__).warning("quitting without waiting for: %s",
                                            ", ".join(window.unfinished))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
