"""AMES in the app: its networks loaded once and only when enabled, the library's
descriptors extracted (a resumable backfill with its own progress), and the re-ranker.

Extraction is a stage of indexing, run after the embedding stage of the same run (see
IndexingService.followups), with its own decode: DINOv2 at 770 px costs hundreds of times
what decoding does, so sharing the embedding stage's decode would save almost nothing and
would hold every batch of the fast stage back to the pace of the slow one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from imagesearch.config import Settings
from imagesearch.core.ames.backbone import DEFAULT_MAX_SIDE
from imagesearch.core.ames.codec import encode_record
from imagesearch.core.ames.models import AmesModels
from imagesearch.core.ames.reading import open_hashed
from imagesearch.core.ames.registry import AmesVariant
from imagesearch.core.ames.reranker import AmesReranker, AmesSettings
from imagesearch.domain import IndexProgress
from imagesearch.services.models import ModelManager
from imagesearch.services.write_lane import WriteLane
from imagesearch.storage.catalog import Catalog

log = logging.getLogger(__name__)

PHASE = "ames features"
_BATCH = {"cuda": 32, "cpu": 4}  # photos extracted between commits (and progress reports)

Progress = Callable[[IndexProgress], None]


def extractor_id(variant: AmesVariant, max_side: int = DEFAULT_MAX_SIDE) -> str:
    """Names the stored records: a change to any of these makes old records stale."""
    return f"ames-dinov2b14reg4-{variant.name}-n{variant.photo_n}-s{max_side}-v1"


class AmesService:
    """Whether AMES is on and usable here; its models, re-ranker and backfill."""

    def __init__(self, settings: Settings, catalog: Catalog, models: ModelManager,
                 lane: WriteLane, max_side: int = DEFAULT_MAX_SIDE) -> None:
        self.settings = settings
        self.catalog = catalog
        self.manager = models
        self.lane = lane
        self.max_side = max_side
        self.variant = models.ames_variant()
        self.enabled = settings.rerank == "ames"
        self._models: AmesModels | None = None
        self._lock = threading.Lock()
        self._backfilling = threading.Lock()  # one backfill at a time, whoever asks
        self._asked_again = False

    @property
    def available(self) -> bool:
        """Enabled, and every checkpoint it needs is installed."""
        return (self.enabled and not self.settings.compact
                and self.manager.ames_paths() is not None)

    @property
    def extractor(self) -> str | None:
        return extractor_id(self.variant, self.max_side) if self.variant else None

    def unavailable_reason(self) -> str | None:
        """Why AMES, chosen in the settings, cannot run (None when it can or is off)."""
        if not self.enabled:
            return None
        if self.settings.compact:
            return ("a compact library keeps no AMES descriptors (they would take 1.5 KB a "
                    "photo more)")
        if self.variant is None:
            return (f"unknown AMES model {self.settings.ames_model!r} in the settings "
                    "(dist or fp)")
        missing = self.manager.ames_missing()
        if missing:
            return ("AMES weights are not installed (" + ", ".join(missing) +
                    "; `imagesearch models download ames`)")
        return None

    def models(self) -> AmesModels:
        """The networks, loaded on first use (seconds; never on the GUI thread).

        Raises:
            ModelUnavailable, ModelLoadError: weights missing or unusable.
        """
        with self._lock:
            if self._models is None:
                from imagesearch.errors import ModelUnavailable

                paths = self.manager.ames_paths()
                if paths is None:
                    raise ModelUnavailable(self.unavailable_reason() or "AMES is off")
                started = time.perf_counter()
                self._models = AmesModels(paths, self.settings.device, self.max_side)
                log.info("AMES loaded on %s in %.1f s", self._models.device,
                         time.perf_counter() - started)
            return self._models

    def reranker(self) -> AmesReranker:
        assert self.variant is not None and self.extractor is not None
        return AmesReranker(self.models, AmesSettings(
            self.extractor, self.variant.lam, self.variant.gamma, self.variant.photo_n))

    # The library's descriptors ----------------------------------------------------------

    def pending(self) -> int:
        """Indexed photos still without current AMES descriptors."""
        extractor = self.extractor
        return self.catalog.count_missing_features(extractor) if extractor else 0

    def backfill(self, progress: Progress | None = None,
                 cancel: threading.Event | None = None) -> int:
        """Extract and store descriptors for every indexed photo that lacks them.

        Commits after each small batch, so a cancelled or killed run loses at most one
        batch and the next run continues where it stopped. Returns photos stored.
        """
        extractor = self.extractor
        if not self.available or extractor is None:
            return 0
        # The app's indexer and its watcher both ask after each run. One backfill at a
        # time: a request made meanwhile has the one under way make one more pass from
        # the start (it pages on by photo id, so a photo edited behind it would be missed).
        stopped = cancel or threading.Event()
        stored = 0
        self._asked_again = True
        while self._asked_again and not stopped.is_set():
            if not self._backfilling.acquire(blocking=False):
                return stored  # the one under way sees the request
            try:
                while self._asked_again and not stopped.is_set():
                    self._asked_again = False
                    stored += self._backfill(extractor, progress, stopped)
            finally:
                self._backfilling.release()
            # A request made between the last check and the release: served here.
        return stored

    def _backfill(self, extractor: str, progress: Progress | None,
                  cancel: threading.Event | None) -> int:
        report = progress or (lambda _p: None)
        cancel = cancel or threading.Event()
        total = self.catalog.count_missing_features(extractor)
        if total == 0:
            return 0
        models = self.models()
        assert self.variant is not None
        step = _BATCH.get(models.device, 4)
        done = failed = stored = 0
        after = -1
        started = time.perf_counter()
        while not cancel.is_set():
            todo = self.catalog.missing_features(extractor, after, step)
            if not todo:
                break
            after = todo[-1][0]
            images, sizes, keys = [], [], []
            for photo_id, path, content_hash in todo:
                if cancel.is_set():
                    break
                try:
                    image, size, found_hash = open_hashed(path, self.max_side)
                except ValueError as exc:
                    # Indexing records why, when it next sees the file; nothing to add.
                    log.info("no AMES descriptors for %s: %s", path, exc)
                    failed += 1
                    continue
                if found_hash != content_hash:
                    continue  # changed since it was indexed: indexing comes first
                images.append(image)
                sizes.append(size)
                keys.append((photo_id, content_hash))
            if cancel.is_set():
                break
            features = models.extract(images, self.variant.photo_n, sizes) if images else []
            records = [(pid, h, len(f), encode_record(models.record(f)))
                       for (pid, h), f in zip(keys, features, strict=True)]
            with self.lane:
                stored += self.catalog.store_features(extractor, records)
            done += len(todo)
            rate = done / max(time.perf_counter() - started, 1e-9)
            report(IndexProgress(PHASE, min(done, total), total, failed,
                                 current=str(todo[-1][1]), images_per_second=rate))
        return stored
