"""What a drop or a paste carries: an image file, raw image data, or folders."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QMimeData
from PySide6.QtGui import QImage

# Encoded formats we hand to the search service as they are (browsers offer these).
_RAW_FORMATS = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp")


def local_paths(mime: QMimeData) -> list[Path]:
    return [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()]


def image_files(mime: QMimeData) -> list[Path]:
    from imagesearch.core.imaging import is_image_name  # Pillow and NumPy: not at start-up

    return [p for p in local_paths(mime) if p.is_file() and is_image_name(p.name)]


def folders(mime: QMimeData) -> list[Path]:
    return [p for p in local_paths(mime) if p.is_dir()]


def remote_urls(mime: QMimeData) -> list[str]:
    return [u.toString() for u in mime.urls() if not u.isLocalFile()]


def image_query(mime: QMimeData) -> Path | bytes | None:
    """The image a drop or paste offers: a local file first, then encoded bytes, then pixels."""
    files = image_files(mime)
    if files:
        return files[0]
    for fmt in _RAW_FORMATS:
        if mime.hasFormat(fmt):
            data = bytes(mime.data(fmt).data())
            if data:
                return data
    if mime.hasImage():
        image = mime.imageData()
        if isinstance(image, QImage) and not image.isNull():
            return image_bytes(image)
    return None


def image_bytes(image: QImage) -> bytes:
    """Encode pixels for the search service; BMP because it is quick to write and lossless."""
    array = QByteArray()
    buffer = QBuffer(array)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "BMP")  # type: ignore[call-overload]  # the stubs want bytes; runtime str
    buffer.close()
    return bytes(array.data())


def offers_image(mime: QMimeData) -> bool:
    return bool(image_files(mime)) or mime.hasImage() or any(
        mime.hasFormat(f) for f in _RAW_FORMATS)
