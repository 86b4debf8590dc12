"""The app's icon, read from the package so it is there installed, frozen or from a checkout."""

from __future__ import annotations

from importlib import resources

from PySide6.QtGui import QIcon, QPixmap

# Rendered by tools/make_icons.py from resources/imagesearch*.svg.
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)

# The freedesktop and AppStream id: resources/<DESKTOP_ID>.desktop names it; on Wayland the
# compositor matches the window to that file (and so to its icon) by this name.
DESKTOP_ID = "org.imagesearch.ImageSearch"


def app_icon() -> QIcon:
    """Every drawn size, so each place picks its own instead of scaling one.

    Read as bytes rather than by file name: a package inside an archive has no file path,
    and QIcon would only fail later, silently, when it first painted.
    """
    icon = QIcon()
    folder = resources.files("imagesearch.gui").joinpath("icons")
    for size in ICON_SIZES:
        pixmap = QPixmap()
        if pixmap.loadFromData(folder.joinpath(f"imagesearch-{size}.png").read_bytes(), "PNG"):
            icon.addPixmap(pixmap)
    return icon
