"""Thumbnails on disk: one small JPEG per (path, mtime, size), written atomically."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from pathlib import Path

from imagesearch.core.imaging import open_image

_QUALITY = 85


class ThumbnailCache:
    """Makes and finds cached thumbnails under one folder, within a size budget.

    The key is the photo's path, its mtime and the requested size, so an edited photo
    gets a fresh thumbnail and stale ones are simply never asked for again: they are the
    least recently used, and go first when the cache outgrows its budget.
    """

    def __init__(self, root: Path, budget_bytes: int = 500 << 20) -> None:
        self.root = root
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._total: int | None = None  # bytes on disk; measured at the first write

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
        try:
            os.utime(target)  # used now: the last to be evicted
            return target
        except FileNotFoundError:
            pass
        except OSError:
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
        self._added(target)
        return target

    def _added(self, target: Path) -> None:
        """Account for a new file; past the budget, evict the least recently used."""
        with self._lock:
            if self._total is None:
                self._total = sum(size for _, size, _ in self._files())
            else:
                self._total += target.stat().st_size
            if self._total <= self.budget_bytes:
                return
            # Down to 90%, so that one write past the budget does not mean one scan each.
            for _, size, file in sorted(self._files()):
                if self._total <= self.budget_bytes * 0.9:
                    break
                if file == target:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    file.unlink()
                    self._total -= size

    def _files(self) -> list[tuple[int, int, Path]]:
        """(mtime in ns, size, path) of every cached thumbnail."""
        found = []
        for folder in self.root.glob("??"):
            with contextlib.suppress(OSError), os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.endswith(".jpg"):
                        with contextlib.suppress(OSError):
                            st = entry.stat()
                            found.append((st.st_mtime_ns, st.st_size, Path(entry.path)))
        return found
