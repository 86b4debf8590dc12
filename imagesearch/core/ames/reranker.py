"""AMES as a re-ranker: the query's descriptors against each shortlisted photo's stored
ones, one logit per pair, fused with the global similarity as the paper does:

    s = lambda * global + (1 - lambda) * sigmoid(gamma * logit)

with lambda and gamma those published for the checkpoint (core/ames/registry.py). Only the
shortlist is re-sorted; photos beyond it keep their order.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagesearch.core.ames.boxes import correspondences, verified_box
from imagesearch.core.ames.codec import decode_record
from imagesearch.core.ames.detector import AmesFeatures
from imagesearch.core.ames.models import AmesModels, PreparedSet
from imagesearch.core.ames.reading import open_upright
from imagesearch.core.rerank import Evidence, RerankOutcome
from imagesearch.errors import FeatureDataError


@dataclass(frozen=True, slots=True)
class AmesSettings:
    """How many descriptors each side brings, and how pairs are batched and fused."""

    extractor_id: str
    lam: float  # weight of the global similarity
    gamma: float  # temperature of the matcher's logit
    photo_n: int = 80  # descriptors stored per photo (all are used on a GPU)
    query_n: int = 600  # on a GPU; the query's are computed at query time
    batch: int = 256  # pairs per forward pass on a GPU
    # The CPU does a tenth of the work per pair (attention grows with the square of the
    # tokens), in batches small enough that a time budget is checked every ~0.1 s.
    cpu_query_n: int = 200
    cpu_photo_n: int = 50
    cpu_batch: int = 16

    def for_device(self, device: str) -> tuple[int, int, int]:
        """(query descriptors, photo descriptors, batch) on this device."""
        if device == "cuda":
            return self.query_n, self.photo_n, self.batch
        return self.cpu_query_n, self.cpu_photo_n, self.cpu_batch


@dataclass(frozen=True, slots=True)
class AmesQuery:
    features: AmesFeatures
    prepared: PreparedSet


class AmesReranker:
    """The "ames" re-ranker; the networks are loaded on first use, by ``load``."""

    name = "ames"
    prior_kind = "global"  # fuse with the global cosine itself, as AMES was tuned

    def __init__(self, load: Callable[[], AmesModels], settings: AmesSettings) -> None:
        self._load = load
        self.settings = settings
        self.data_kind = settings.extractor_id

    def prepare(self, image: Path | bytes) -> AmesQuery:
        """The query's descriptors (many: it is computed once). Raises ValueError."""
        models = self._load()
        pixels, size = open_upright(image, models.max_side)
        query_n, _, _ = self.settings.for_device(models.device)
        features = models.extract([pixels], query_n, [size])[0]
        return AmesQuery(features, models.query_set(features))

    def fuse(self, prior: np.ndarray, match: np.ndarray) -> np.ndarray:
        lam = self.settings.lam
        return np.asarray(lam * prior + (1.0 - lam) * match, dtype=np.float32)

    def score(self, query: AmesQuery, records: Mapping[int, bytes],
              cancel: threading.Event, deadline: float | None = None) -> RerankOutcome:
        models = self._load()
        _, photo_n, step = self.settings.for_device(models.device)
        outcome = RerankOutcome()
        photos: list[tuple[int, PreparedSet]] = []
        for photo_id, blob in records.items():
            try:
                record = decode_record(blob)
            except FeatureDataError:
                outcome.damaged.append(photo_id)
                continue
            if not models.compatible(record):
                outcome.damaged.append(photo_id)  # made for another checkpoint
                continue
            photos.append((photo_id, models.photo_set(record, photo_n)))
        for start in range(0, len(photos), step):
            if cancel.is_set() or (deadline is not None and time.monotonic() > deadline):
                outcome.complete = False
                break
            batch = photos[start:start + step]
            logits = models.logits(query.prepared, [p for _, p in batch])
            for (photo_id, photo), logit in zip(batch, logits.tolist(), strict=True):
                outcome.evidence[photo_id] = Evidence(
                    float(logit), _sigmoid(self.settings.gamma * logit),
                    self._box(query, photo) if logit > 0.0 else None)
        return outcome

    def _box(self, query: AmesQuery, photo: PreparedSet
             ) -> tuple[float, float, float, float] | None:
        """Boxes only for the pairs the matcher calls a match (positive logit)."""
        q = query.prepared
        if q.codes is not None and photo.codes is not None:
            qi, pj = correspondences(q.codes, photo.codes, binary=True)
        else:
            qi, pj = correspondences(q.values, photo.values, binary=False)
        box, _ = verified_box(q.xy, photo.xy, qi, pj, photo.patch)
        return box


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
