"""Decoding a photo for AMES: upright, at no less than the size the backbone will use."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from imagesearch.core.image_reading import HashingReader
from imagesearch.core.imaging import open_image


def open_upright(source: Path | bytes, long_side: int) -> tuple[Image.Image, tuple[int, int]]:
    """Upright RGB pixels (possibly a reduced decode) and the original's upright size.

    Raises:
        ValueError: unreadable, or not an image, with the reason.
    """
    if isinstance(source, bytes):
        image, facts = open_image(source, "query", draft_size=64, draft_long_side=long_side)
        return image, (facts.width, facts.height)
    image, size, _ = open_hashed(source, long_side)
    return image, size


def open_hashed(path: Path, long_side: int) -> tuple[Image.Image, tuple[int, int], str]:
    """As open_upright for a file, with the content hash of the bytes that were decoded
    (what the catalog keys the stored record by).

    Raises:
        ValueError: unreadable, or not an image, with the reason.
    """
    try:
        with open(path, "rb") as f:
            reader = HashingReader(f)
            image, facts = open_image(reader, path.name, draft_size=64,
                                      file_size=os.fstat(f.fileno()).st_size,
                                      draft_long_side=long_side)
            return image, (facts.width, facts.height), reader.digest()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
