"""Following the system's light or dark palette, and the few colours the app picks itself."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

# Styles that draw with the palette, so a dark palette gives a dark window.
_PALETTE_STYLES = {"fusion", "macos", "windows11"}


def is_dark(palette: QPalette) -> bool:
    """Dark if the window background is darker than its text."""
    window = palette.color(QPalette.ColorRole.Window)
    text = palette.color(QPalette.ColorRole.WindowText)
    return window.lightnessF() < text.lightnessF()


def system_prefers_dark() -> bool:
    hints = QGuiApplication.styleHints()
    return hints.colorScheme() == Qt.ColorScheme.Dark


def apply_theme(app: QApplication) -> None:
    """Use a palette-driven style, and follow the system scheme when it changes.

    Qt already hands the system palette to the application; the old Windows style
    ignores it, so there Fusion takes over.
    """
    style = app.style().name().lower()
    if style not in _PALETTE_STYLES and (system_prefers_dark() or style == "windowsvista"):
        app.setStyle("Fusion")
    if system_prefers_dark() and not is_dark(app.palette()):
        # Some platform themes report a dark scheme without handing out a dark palette.
        app.setPalette(dark_palette())


def dark_palette() -> QPalette:
    pal = QPalette()
    base, window, text = QColor(30, 30, 32), QColor(43, 43, 46), QColor(230, 230, 230)
    for role, color in (
        (QPalette.ColorRole.Window, window), (QPalette.ColorRole.WindowText, text),
        (QPalette.ColorRole.Base, base), (QPalette.ColorRole.AlternateBase, window),
        (QPalette.ColorRole.Text, text), (QPalette.ColorRole.Button, window),
        (QPalette.ColorRole.ButtonText, text), (QPalette.ColorRole.ToolTipBase, base),
        (QPalette.ColorRole.ToolTipText, text), (QPalette.ColorRole.Highlight,
                                                  QColor(64, 128, 214)),
        (QPalette.ColorRole.HighlightedText, QColor(255, 255, 255)),
        (QPalette.ColorRole.PlaceholderText, QColor(150, 150, 150)),
        (QPalette.ColorRole.Mid, QColor(90, 90, 95)),
        (QPalette.ColorRole.Link, QColor(110, 170, 255)),
    ):
        pal.setColor(role, color)
    return pal


def box_pen_color() -> QColor:
    """The match-box outline: a saturated colour that reads on photos in either theme."""
    return QColor(255, 196, 0)


def muted_text_style() -> str:
    """Style sheet for secondary text, derived from the current palette."""
    app = QApplication.instance()
    pal = app.palette() if isinstance(app, QApplication) else QPalette()
    return f"color: {pal.color(QPalette.ColorRole.PlaceholderText).name()};"
