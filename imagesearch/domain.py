"""Plain data passed between the layers: no behaviour beyond small conveniences."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


class PhotoStatus(enum.StrEnum):
    """Where a photo stands in the indexing pipeline."""

    PENDING = "pending"
    INDEXED = "indexed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Box:
    """Where the match is: corners in pixels of the upright original photo (EXIF
    rotation applied), whatever size it was decoded or shown at."""

    x0: float
    y0: float
    x1: float
    y1: float

    def relative(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(x, y, w, h) as fractions of the photo's width and height."""
        w, h = max(width, 1), max(height, 1)
        return self.x0 / w, self.y0 / h, (self.x1 - self.x0) / w, (self.y1 - self.y0) / h

    def as_list(self) -> list[float]:
        return [round(self.x0, 1), round(self.y0, 1), round(self.x1, 1), round(self.y1, 1)]


@dataclass(frozen=True, slots=True)
class OfflineSubfolder:
    """A part of a library folder that cannot be seen now; its photos are kept."""

    path: Path
    reason: str  # e.g. "its drive is not mounted now"


@dataclass(frozen=True, slots=True)
class FolderInfo:
    """A library folder and its counts."""

    id: int
    path: Path
    watched: bool
    online: bool
    photo_count: int
    indexed_count: int
    failed_count: int
    last_scan: datetime | None  # aware, in UTC
    offline_subfolders: tuple[OfflineSubfolder, ...] = ()


@dataclass(frozen=True, slots=True)
class PhotoRecord:
    """One photo as the catalog knows it."""

    id: int
    path: Path
    folder_id: int
    size: int
    mtime: float
    content_hash: str | None
    width: int | None
    height: int | None
    format: str | None
    captured_at: datetime | None
    status: PhotoStatus
    error: str | None


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One result of a query, best first."""

    photo_id: int
    path: Path
    score: float
    width: int | None = None
    height: int | None = None
    size: int | None = None
    captured_at: datetime | None = None
    mtime: float | None = None
    box: Box | None = None
    global_score: float | None = None  # the embedding's cosine, when a model ran
    rerank_score: float | None = None  # the re-ranker's own measure (verified inliers, ...)


@dataclass(frozen=True, slots=True)
class Query:
    """What the user asked for: any mix of an image, a description and negatives.

    ``text`` may contain ``-term`` words (or ``-"a phrase"``); those are split
    off into negatives by the search service.
    """

    text: str = ""
    image: Path | bytes | None = None
    image_weight: float = 0.5
    top_k: int = 50
    folder: Path | None = None

    @property
    def is_empty(self) -> bool:
        return not self.text.strip() and self.image is None


# The progress phase of bringing the local-feature index up to date.
LOCAL_INDEX_PHASE = "local index"


@dataclass(frozen=True, slots=True)
class IndexProgress:
    """A progress report from indexing: counts so far out of the planned total."""

    phase: str  # "scanning", "embedding", "saving", "done"
    done: int = 0
    total: int = 0
    failed: int = 0
    current: str = ""
    images_per_second: float = 0.0


@dataclass(frozen=True, slots=True)
class IndexReport:
    """What one indexing run did."""

    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    failed: int = 0
    unchanged: int = 0
    completed: int = 0  # unchanged photos given what they lacked (local features, a vector)
    cancelled: bool = False
    offline_folders: tuple[Path, ...] = ()
    seconds: float = 0.0
    warnings: tuple[str, ...] = ()  # e.g. the index file could not be saved

    @property
    def embedded(self) -> int:
        return self.added + self.updated


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model the app knows about and whether its weights are on disk."""

    id: str  # "ARCH/TAG" as open_clip names them
    arch: str
    tag: str
    installed: bool
    path: Path | None = None
    size_bytes: int | None = None
    description: str = ""
    is_default: bool = False
    runtime: str = ""  # the runtime probe's choice and figures on this machine, if probed


@dataclass(frozen=True, slots=True)
class LibraryStatus:
    """Totals for the status bar and `imagesearch status`."""

    library_dir: Path
    model_id: str
    device: str
    photo_count: int
    indexed_count: int
    pending_count: int
    failed_count: int
    folders: tuple[FolderInfo, ...] = ()
    last_indexed: datetime | None = None
    failures: tuple[PhotoRecord, ...] = field(default_factory=tuple)
    runtime: str = ""  # how the model runs here and the probe's figures ("" before a probe)
    search_index: str | None = None  # the index's family and size in a line; None: none yet
    storage: str = "standard"  # how much the library keeps of each photo, in a line
