"""Thumbnails on disk: one small JPEG per (path, mtime, size), written atomically."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from imagesearch.core.imaging import open_image

_QUALITY = 85


class ThumbnailCache:
    """Makes and finds cached thumbnails under one folder.

    The key is the photo's path, its mtime and the requested size, so an edited photo
    gets a fresh thumbnail and stale ones are simply never asked for again.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def cache_path(self, path: Path, mtime: float, size: int) -> Path:
        # fsencode: a Linux file name need not be valid UTF-8.
        key = hashlib.sha1(os.fsencode(path) + f"\0{mtime!r}\0{size}".encode()).hexdigest()
        return self.root / key[:2] / f"{key}.jpg"

    def get(self, path: Path, mtime: float | None, size: int) -> Path:
        """The cached thumbnail for this photo, made first if it is not there yet.

        Args:
            mtime: the photo's modification time as the catalog knows it; None to stat it.

        Raises:
            ValueError: the photo cannot be read as an image, with the reason.
        """
        if mtime is None:
            try:
                mtime = path.stat().st_mtime
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
        target = self.cache_path(path, mtime, size)
        if target.is_file():
            return target
        try:
            with open(path, "rb") as f:
                img, _ = open_image(f, path.name, draft_size=size,
                                    file_size=os.fstat(f.fileno()).st_size)
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
        img.thumbnail((size, size))
        target.parent.mkdir(parents=True, exist_ok=True)
        # Temp file then rename: a reader never sees half a JPEG, even if we are killed.
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                img.save(fh, "JPEG", quality=_QUALITY)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return target
