"""Library management: folders in and out, and where everything stands."""

from __future__ import annotations

import os
from pathlib import Path

from imagesearch.config import Settings
from imagesearch.core.vector_codec import TRAIN_MIN
from imagesearch.domain import FolderInfo, LibraryStatus, PhotoRecord, PhotoStatus
from imagesearch.errors import CatalogError, FolderError
from imagesearch.services.indexing import own_data_folders
from imagesearch.services.models import ModelManager
from imagesearch.services.vector_store import VectorStore
from imagesearch.services.write_lane import WriteLane
from imagesearch.storage.catalog import Catalog, SubtreeMemory


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
        for own in own_data_folders(self.settings):
            if folder == own or folder.is_relative_to(own):
                raise FolderError(f"{folder} holds imagesearch's own data (catalog, index, "
                                  "thumbnails or model weights), not photos.")
        with self.lane:
            folder_id = self.catalog.add_folder(folder, watched=watched)
        return next(f for f in self.catalog.folders() if f.id == folder_id)

    def remove_folder(self, folder: Path | int) -> int:
        """Forget a folder and its photos (the files are not touched). Returns photos removed.

        A subfolder of a library folder (an offline one, say) has its photos forgotten;
        a later scan finds whatever is there again.

        Raises:
            FolderError: no such folder in the library.
        """
        if isinstance(folder, Path):
            # Photos under a linked subfolder are stored under the link's path, not its
            # target's: resolve the folders above it only.
            absolute = Path(os.path.abspath(os.path.expanduser(folder)))
            part = absolute.parent.resolve() / absolute.name
            owner = next((f for f in self.catalog.folders()
                          if part != f.path and part.is_relative_to(f.path)), None)
            if owner is not None and _resolved(folder) != owner.path:
                return self._forget_subfolder(owner, part)
        info = self._find(folder)
        with self.lane:
            self.vectors.refresh()
            ids = self.catalog.ids_under(info.path)
            removed = self.catalog.remove_folder(info.id)
            self.vectors.remove(ids, self.catalog.last_commit())
        self.vectors.save_soon()
        return removed

    def _forget_subfolder(self, owner: FolderInfo, folder: Path) -> int:
        with self.lane:
            self.vectors.refresh()
            ids = self.catalog.ids_under(folder)
            self.catalog.remove_photos(ids)
            self.vectors.remove(ids, self.catalog.last_commit())
            memory = self.catalog.subtrees(owner.id)
            self.catalog.set_subtrees(owner.id, SubtreeMemory(
                {p: d for p, d in memory.mounts.items() if not p.is_relative_to(folder)},
                {p: w for p, w in memory.offline.items() if not p.is_relative_to(folder)}))
        self.vectors.save_soon()
        return len(ids)

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
            runtime=self.models.runtime_summary(),
            photo_count=sum(counts.values()),
            indexed_count=counts[PhotoStatus.INDEXED],
            pending_count=counts[PhotoStatus.PENDING],
            failed_count=counts[PhotoStatus.FAILED],
            folders=tuple(self.catalog.folders()),
            last_indexed=self.catalog.last_indexed(),
            failures=tuple(self.catalog.failures(failures)) if failures else (),
            search_index=self.vectors.describe(),
            storage=self._storage(),
        )

    def _storage(self) -> str:
        """The storage setting and how far the library is along it, in a line."""
        try:
            codec = self.vectors.rows.codec()
        except CatalogError as exc:
            return f"{self.settings.storage}, but {exc}"
        if not self.settings.compact:
            return "standard" if codec is None else (
                "standard (the vectors are still compact codes: the next index run makes "
                "them float16 again)")
        if codec is None:
            return (f"compact (vectors kept as in a standard library until it holds "
                    f"{TRAIN_MIN:,} photos to learn their codes from)")
        return f"compact ({codec.parts}-byte vector codes, at most 2 KB a photo)"

    def photo(self, path: Path) -> PhotoRecord | None:
        return self.catalog.photo_by_path(path)

    def _find(self, folder: Path | int) -> FolderInfo:
        path = _resolved(folder) if isinstance(folder, Path) else None
        for f in self.catalog.folders():
            if f.id == folder or f.path == path:
                return f
        raise FolderError(f"{folder} is not a folder of this library.")


def _resolved(path: Path) -> Path:
    """As add_folder stores it: absolute, links resolved (a missing folder resolves too)."""
    return Path(os.path.abspath(os.path.expanduser(path))).resolve()
