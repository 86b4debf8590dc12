"""Library management: folders in and out, and where everything stands."""

from __future__ import annotations

import os
from pathlib import Path

from imagesearch.config import Settings
from imagesearch.domain import FolderInfo, LibraryStatus, PhotoRecord, PhotoStatus
from imagesearch.errors import FolderError
from imagesearch.services.models import ModelManager
from imagesearch.services.vector_store import VectorStore
from imagesearch.services.write_lane import WriteLane
from imagesearch.storage.catalog import Catalog


class LibraryService:
    """Adds and removes folders and reports the library's state."""

    def __init__(self, settings: Settings, catalog: Catalog, models: ModelManager,
                 vectors: VectorStore, lane: WriteLane) -> None:
        self.settings = settings
        self.catalog = catalog
        self.models = models
        self.vectors = vectors
        self.lane = lane

    def add_folder(self, path: Path, watched: bool = True) -> FolderInfo:
        """Add a folder to the library (it is indexed by the next run).

        Raises:
            FolderError: it does not exist, is not a folder, or cannot be read.
        """
        folder = Path(os.path.abspath(os.path.expanduser(path)))
        if not folder.exists():
            raise FolderError(f"{folder} does not exist.")
        if not folder.is_dir():
            raise FolderError(f"{folder} is not a folder.")
        if not os.access(folder, os.R_OK | os.X_OK):
            raise FolderError(f"{folder} cannot be read (permission denied).")
        folder = folder.resolve()
        with self.lane:
            folder_id = self.catalog.add_folder(folder, watched=watched)
        return next(f for f in self.catalog.folders() if f.id == folder_id)

    def remove_folder(self, folder: Path | int) -> int:
        """Forget a folder and its photos (the files are not touched). Returns photos removed.

        Raises:
            FolderError: no such folder in the library.
        """
        info = self._find(folder)
        with self.lane:
            self.vectors.refresh()
            ids = self.catalog.ids_under(info.path)
            removed = self.catalog.remove_folder(info.id)
            self.vectors.remove(ids, self.catalog.last_commit())
        self.vectors.save_soon()
        return removed

    def set_watched(self, folder: Path | int, watched: bool) -> None:
        info = self._find(folder)
        with self.lane:
            self.catalog.set_folder_state(info.id, watched=watched)

    def folders(self) -> list[FolderInfo]:
        return self.catalog.folders()

    def failures(self, limit: int = 1000) -> list[PhotoRecord]:
        return self.catalog.failures(limit)

    def status(self, failures: int = 0) -> LibraryStatus:
        counts = self.catalog.counts()
        return LibraryStatus(
            library_dir=self.settings.library_dir,
            model_id=self.models.model_id,
            device=self.models.device(),
            photo_count=sum(counts.values()),
            indexed_count=counts[PhotoStatus.INDEXED],
            pending_count=counts[PhotoStatus.PENDING],
            failed_count=counts[PhotoStatus.FAILED],
            folders=tuple(self.catalog.folders()),
            last_indexed=self.catalog.last_indexed(),
            failures=tuple(self.catalog.failures(failures)) if failures else (),
        )

    def photo(self, path: Path) -> PhotoRecord | None:
        return self.catalog.photo_by_path(path)

    def _find(self, folder: Path | int) -> FolderInfo:
        for f in self.catalog.folders():
            if (isinstance(folder, int) and f.id == folder) or (
                    isinstance(folder, Path) and f.path == Path(os.path.abspath(folder))):
                return f
        raise FolderError(f"{folder} is not a folder of this library.")
