"""The weight-free shortlist: keeps the ASMK inverted file in step with the catalog.

The catalog's local-feature records are the truth; the vocabulary and inverted file are a
cache of them in the index folder. New photos are added with the current vocabulary; the
vocabulary itself is learned again (in the background) once the library has doubled
since it was learned, so it keeps fitting the photos it describes.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imagesearch.config import Settings
from imagesearch.core.feature_codec import decode_features
from imagesearch.core.local_features import (
    COMPACT_LIBRARY_MODE,
    FEATURE_FAMILY,
    FEATURE_MODES,
    FeatureMode,
    LocalFeatures,
)
from imagesearch.core.local_index import InvertedFile, Vocabulary, vocabulary_size
from imagesearch.core.local_index_file import journal_path, lock_path
from imagesearch.errors import (
    CatalogError,
    FeatureDataError,
    IndexFileError,
    IndexUnavailableError,
)

if TYPE_CHECKING:
    from imagesearch.storage.catalog import Catalog

log = logging.getLogger(__name__)

AMES_FAMILY = "ames-"  # how AMES's extractor ids begin (services/ames.py)
MIN_PHOTOS = 50  # below this a vocabulary is not worth learning: every photo is verified
_SAMPLE_PER_PHOTO = 64  # descriptors each photo gives vocabulary training, at least
TRAIN_DESCRIPTORS = 500_000  # the vocabulary is learned from at most this many (seconds)
_MIN_DESCRIPTORS = 500
ADD_BATCH = 16_384  # descriptors decoded before they are added to the inverted file
RETRY_S = 30.0  # an index file another process was writing is not tried again sooner

Report = Callable[[int, int], None]  # (done, total) while (re)building


def feature_mode(settings: Settings) -> FeatureMode | None:
    """The local-feature mode in force, or None when local features are off (a compact
    library keeps fewer details, whichever mode is chosen)."""
    mode = FEATURE_MODES.get(settings.local_features)
    return COMPACT_LIBRARY_MODE if mode is not None and settings.compact else mode


@dataclass(frozen=True, slots=True)
class LocalIndexStatus:
    photos: int  # photos in the inverted file
    words: int  # vocabulary size (0: none yet)
    trained_photos: int


class LocalIndexService:
    """Owns the inverted file for the active feature mode."""

    def __init__(self, settings: Settings, catalog: Catalog, background: bool = True) -> None:
        """Args:
            background: refresh on a thread of its own when asked to (a long-lived app);
                False for a one-shot command, which refreshes in the foreground instead:
                a vocabulary still being learned when the process ends is lost, and the
                thread is then cut off in the middle of FAISS or SQLite (a crash).
        """
        self.catalog = catalog
        self.background = background
        self.mode = feature_mode(settings)
        # A compact library keeps no details index (its 4 KB a photo would break the 2 KB
        # budget): the model's shortlist is verified instead.
        self.compact = settings.compact
        self.path = index_file(settings.index_dir, self.mode.extractor_id if self.mode else "")
        self._inverted: InvertedFile | None = None
        self._loaded = False
        self._lock = threading.RLock()  # guards _inverted and _loaded, briefly
        self._refreshing = threading.Lock()  # one refresh at a time; searches go on meanwhile
        self._retry_at = 0.0  # when an unavailable file may be tried again (monotonic)
        self._thread: threading.Thread | None = None
        self._again = False
        self._closing = threading.Event()

    @property
    def extractor(self) -> str | None:
        return self.mode.extractor_id if self.mode else None

    def status(self) -> LocalIndexStatus:
        inv = self._inverted
        if inv is None:
            return LocalIndexStatus(0, 0, 0)
        return LocalIndexStatus(len(inv), inv.vocabulary.k, inv.trained_photos)

    def vocabulary(self) -> Vocabulary | None:
        inv = self._inverted
        return inv.vocabulary if inv is not None else None

    def shortlist(self, features: LocalFeatures, k: int,
                  allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """Best photos by ASMK similarity; None when there is no index (yet, or in a
        compact library)."""
        if self.compact:
            return None
        with self._lock:
            self._load_if_due()
            inv = self._inverted
        if inv is None or len(inv) == 0:
            return None
        return inv.search(features, k, allowed)

    def missing(self) -> bool:
        """True when the library has photo details enough for an index but none is built
        (a one-shot process builds it before searching, rather than finding nothing)."""
        if self.mode is None or self.compact:
            return False
        with self._lock:
            self._load_if_due()
            if not self._loaded:
                return False  # there, but another process is writing it
            if self._inverted is not None and len(self._inverted) > 0:
                return False
        return len(self.catalog.feature_ids(self.mode.extractor_id)) >= MIN_PHOTOS

    def retire_old_extractors(self) -> int:
        """Forget photo details that no mode of this version can read (stored by an
        earlier version, whose extractor has changed since) and their index files.

        The details of the other current mode are kept, so switching back is instant,
        and so is a process of this version running with the other mode; a compact
        library keeps only its own (and no AMES descriptors), to stay within 2 KB. Returns the
        records deleted; a busy catalog or an undeletable file is left for the next run.
        """
        current = {mode.extractor_id for mode in FEATURE_MODES.values()}
        if self.compact:  # at most 2 KB a photo: nothing else kept
            current = {self.mode.extractor_id} if self.mode is not None else set()
        try:
            dropped = self.catalog.drop_other_features(FEATURE_FAMILY, current)
            if self.compact:  # nor AMES's descriptors of an earlier, standard life
                dropped += self.catalog.drop_other_features(AMES_FAMILY, ())
        except CatalogError as exc:
            log.warning("%s; tried again next time", exc)
            return 0
        files = {index_file(self.path.parent, name).name for name in current}
        files |= {other(self.path.parent / name).name for name in files
                  for other in (journal_path, lock_path)}
        # Earlier versions' files (".npz" before the base was memory-mapped) go too.
        for path in self.path.parent.glob(f"local-{FEATURE_FAMILY}*"):
            if path.name not in files and not path.name.endswith(".tmp"):
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("cannot delete the old index file %s: %s", path, exc)
        # Files a process killed while writing or merging left behind (an hour old: a
        # process running now may be writing one).
        for path in self.path.parent.glob("local-*"):
            if path.name.endswith(".tmp") or path.name.startswith("local-merge-"):
                with contextlib.suppress(OSError):
                    if time.time() - path.stat().st_mtime > 3600:
                        path.unlink()
        if dropped:
            log.info("forgot %d photo-detail records of earlier versions", dropped)
        return dropped

    def _load_if_due(self) -> None:
        """Open the file if not yet done, unless it was unavailable moments ago (then
        searches go on without it rather than each wait for another process's write)."""
        if not self._loaded and time.monotonic() >= self._retry_at:
            self._load()
            if self._loaded and self._retry_at:
                self._retry_at = 0.0
                self.refresh_later()  # the refresh that found it unavailable gave up

    def _load(self) -> None:
        self._loaded = True
        if self.mode is None or not self.path.exists():
            return
        try:
            self._inverted = InvertedFile.load(self.path, self.mode.extractor_id,
                                               self.path.parent)
        except IndexUnavailableError as exc:
            # The file is fine, but another process is writing it (Windows readers wait
            # for that) or memory is short: tried again later, never rebuilt for it.
            self._loaded = False
            self._retry_at = time.monotonic() + RETRY_S
            log.info("the local-feature index is not open yet: %s", exc)
        except IndexFileError as exc:
            log.info("the local-feature index will be rebuilt: %s", exc)

    # Keeping up -----------------------------------------------------------------------------

    def refresh(self, progress: Report | None = None,
                cancel: threading.Event | None = None) -> bool:
        """Bring the inverted file in step with the catalog now; True if it changed."""
        if self.mode is None or self.compact:
            return False
        extractor = self.mode.extractor_id
        with self._refreshing:
            with self._lock:
                if not self._loaded:
                    self._load()
                if not self._loaded:
                    return False  # unavailable: the search that opens it asks again
                inv = self._inverted
            have = self.catalog.feature_versions(extractor)
            if len(have) < MIN_PHOTOS:
                # Too few to be worth an index: every photo is verified instead, so an old
                # index (of a library that shrank) must not stand in for the new photos.
                return self._discard()
            if inv is None or len(have) >= 2 * max(inv.trained_photos, 1):
                if progress is not None:
                    progress(0, len(have))  # learning the vocabulary: about a minute at most
                inv = self._train(len(have), cancel)
                if inv is None or (cancel is not None and cancel.is_set()):
                    return False
            known = inv.versions()
            gone = [pid for pid in known if pid not in have]
            # New photos, and those whose record was made again for new bytes.
            todo = [pid for pid, version in have.items() if known.get(pid) != version]
            inv.remove(gone)
            damaged: list[int] = []
            for start in range(0, len(todo), 500):
                if cancel is not None and cancel.is_set():
                    break
                part = todo[start:start + 500]
                decoded: list[tuple[int, LocalFeatures, str]] = []
                held = 0  # descriptors decoded and not yet added: memory stays bounded
                for photo_id, blob in self.catalog.features(part, extractor).items():
                    try:
                        features = decode_features(blob)
                    except FeatureDataError:
                        damaged.append(photo_id)
                        continue
                    decoded.append((photo_id, features, have[photo_id]))
                    held += len(features)
                    if held >= ADD_BATCH:
                        inv.add_many(decoded)
                        decoded, held = [], 0
                inv.add_many(decoded)
                if progress is not None:
                    progress(min(start + 500, len(todo)), len(todo))
            if damaged:
                self.catalog.drop_features(damaged, extractor)
            if inv is not self._inverted and cancel is not None and cancel.is_set():
                # A new vocabulary with only some photos in it must not replace the index
                # (or its file) that holds them all; the next refresh starts again.
                return False
            changed = bool(todo or gone) or inv is not self._inverted
            with self._lock:
                self._inverted = inv
            if changed:
                try:
                    inv.save(self.path, extractor)
                except IndexFileError as exc:
                    log.warning("%s; the local index is kept in memory", exc)
            return changed

    def _discard(self) -> bool:
        with self._lock:
            had = self._inverted is not None
            self._inverted = None
        try:
            self.path.unlink(missing_ok=True)
            journal_path(self.path).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the old local-feature index %s: %s", self.path, exc)
        return had

    def _train(self, photos: int, cancel: threading.Event | None) -> InvertedFile | None:
        """A vocabulary learned from a sample of the library's descriptors."""
        assert self.mode is not None
        rng = np.random.default_rng(0)
        # A small library gives all its descriptors; a big one a sample from every photo.
        keep = max(_SAMPLE_PER_PHOTO, TRAIN_DESCRIPTORS // max(photos, 1))
        total = 0
        sample: list[np.ndarray] = []
        for chunk in self.catalog.iter_features(self.mode.extractor_id):
            if cancel is not None and cancel.is_set():
                return None
            for _, blob in chunk:
                try:
                    d = decode_features(blob).descriptors
                except FeatureDataError:
                    continue
                total += len(d)
                if len(d) > keep:
                    d = d[rng.choice(len(d), keep, replace=False)]
                sample.append(d.astype(np.float16))  # half the memory until sampled
        half = np.concatenate(sample) if sample else np.zeros((0, 128), np.float16)
        sample.clear()
        if len(half) < _MIN_DESCRIPTORS:
            return None
        if len(half) > TRAIN_DESCRIPTORS:
            half = half[rng.choice(len(half), TRAIN_DESCRIPTORS, replace=False)]
        data = half.astype(np.float32)
        del half
        k = vocabulary_size(total)
        log.info("learning a visual vocabulary of %d words from %d descriptors of %d photos",
                 k, len(data), photos)
        return InvertedFile(Vocabulary.train(data, k), photos, self.path.parent)

    def refresh_later(self) -> bool:
        """Refresh on a background thread; calls made meanwhile fold into one more pass.

        Returns whether a refresh is under way (False: local features off, closing, or a
        one-shot process that refreshes in the foreground).
        """
        if self.mode is None or self.compact or self._closing.is_set() or not self.background:
            return False
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._again = True
                return True
            self._thread = threading.Thread(target=self._background, daemon=True,
                                            name="imagesearch-local-index")
            self._thread.start()
        return True

    def _background(self) -> None:
        while True:
            try:
                self.refresh(cancel=self._closing)
            except Exception:
                log.exception("updating the local-feature index failed")
            with self._lock:
                if not self._again or self._closing.is_set():
                    self._thread = None
                    return
                self._again = False

    def close(self, timeout: float = 5.0) -> bool:
        """Stop refreshing; False if a refresh (a vocabulary being learned: FAISS cannot be
        interrupted) is still running after ``timeout``."""
        self._closing.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True


def index_file(index_dir: Path, extractor: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", extractor)
    return index_dir / f"local-{slug}.asmk"
