"""Spatial verification as a re-ranker: weight-free, on every machine."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from imagesearch.core.feature_codec import decode_features
from imagesearch.core.imaging import load_query_features
from imagesearch.core.local_features import COMPACT_LIBRARY_MODE, FEATURE_MODES, LocalFeatures
from imagesearch.core.rerank import Evidence, RerankOutcome, fuse
from imagesearch.core.spatial_verification import (
    FEW_INLIERS_SIMILARITY,
    MIN_INLIERS,
    QueryFeatures,
    verify,
)
from imagesearch.errors import FeatureDataError

# Inliers at which a match counts as certain; below MIN_INLIERS it is no match at all.
SURE_INLIERS = 25
# Photo keypoints verified between checks of the clock and the cancel flag: 64 compact
# photos, 16 detailed ones (~50 ms either way on 2 cores). A batch's proposals are scored
# together (spatial_verification._best_similarities), and records are decoded a batch at a
# time, so a cancelled re-rank has not decoded the rest.
_BATCH_ROWS = 16_384


def match_confidence(inliers: int) -> float:
    """0 below the verification threshold, then rising on a log scale to 1."""
    if inliers < MIN_INLIERS:
        return 0.0
    span = math.log(SURE_INLIERS) - math.log(MIN_INLIERS - 1)
    return min(1.0, (math.log(inliers) - math.log(MIN_INLIERS - 1)) / span)


class SpatialReranker:
    """Matches the query's SIFT keypoints to each photo's stored ones and verifies geometry."""

    name = "sp"
    prior_kind = "rank"

    def __init__(self, data_kind: str) -> None:
        self.data_kind = data_kind
        codec = next((m.codec for m in (*FEATURE_MODES.values(), COMPACT_LIBRARY_MODE)
                      if m.extractor_id == data_kind), None)
        # Three inliers verify only with the compact codec (FEW_INLIERS_SIMILARITY).
        self.few_alike = FEW_INLIERS_SIMILARITY.get(codec) if codec else None
        self.codec = codec  # which decides the dimensions descriptors are compared in

    def prepare(self, image: Path | bytes) -> QueryFeatures:
        return QueryFeatures(load_query_features(image), self.codec)

    def prepare_features(self, features: LocalFeatures) -> QueryFeatures:
        return QueryFeatures(features, self.codec)

    @staticmethod
    def fuse(prior: np.ndarray, match: np.ndarray) -> np.ndarray:
        return fuse(prior, match)

    def score(self, query: QueryFeatures, records: Mapping[int, bytes],
              cancel: threading.Event, deadline: float | None = None) -> RerankOutcome:
        outcome = RerankOutcome()
        items = list(records.items())
        batch: list[tuple[int, LocalFeatures]] = []
        rows = 0
        for i, (photo_id, blob) in enumerate(items):
            if cancel.is_set() or (deadline is not None and time.monotonic() > deadline):
                outcome.complete = False
                break
            try:
                features = decode_features(blob)
            except FeatureDataError:
                outcome.damaged.append(photo_id)
            else:
                batch.append((photo_id, features))
                rows += len(features)
            if not batch or (rows < _BATCH_ROWS and i < len(items) - 1):
                continue
            results = verify(query, [f for _, f in batch], cancel, few_alike=self.few_alike)
            for (pid, _), result in zip(batch, results, strict=True):
                if result is None:
                    outcome.complete = False
                    continue
                outcome.evidence[pid] = Evidence(
                    float(result.inliers),
                    match_confidence(result.inliers) if result.verified else 0.0,
                    result.box if result.verified else None)
            batch, rows = [], 0
        return outcome
