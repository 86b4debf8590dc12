"""The re-rank stage's one small interface, and how its evidence is fused with the shortlist.

A re-ranker looks at a query and the stored records of a shortlist's photos and returns,
per photo, how strongly it is the same object and where it sits. The service that
composes re-rankers (services/reranking.py) fetches the records, owns cancellation and
time budgets, and turns the fused order into hits.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

BoxPixels = tuple[float, float, float, float]  # x0, y0, x1, y1 in the upright original


@dataclass(frozen=True, slots=True)
class Evidence:
    """A re-ranker's verdict on one photo."""

    strength: float  # its own scale, comparable within one query (inliers, a logit, ...)
    match: float  # in [0, 1]: how sure it is that this photo shows the query's object
    box: BoxPixels | None = None


@dataclass
class RerankOutcome:
    """Verdicts by photo id; records found damaged are named so they can be recomputed."""

    evidence: dict[int, Evidence] = field(default_factory=dict)
    damaged: list[int] = field(default_factory=list)
    complete: bool = True  # False: cancelled or out of time before every photo was seen


class Reranker(Protocol):
    """What the service needs from a re-ranker."""

    name: str  # "sp", "ames": also the stage name in `imagesearch eval`
    data_kind: str  # which stored records it reads (an extractor id in the catalog)
    # What ``fuse`` gets as ``prior``: "rank" (rank-normalised shortlist scores) or
    # "global" (the global embedding's cosine, for re-rankers tuned against one).
    prior_kind: str

    def prepare(self, image: Path | bytes) -> Any:
        """The query side, computed once per query. Raises ValueError for a bad image."""
        ...

    def score(self, query: Any, records: Mapping[int, bytes], cancel: threading.Event,
              deadline: float | None = None) -> RerankOutcome:
        """Verdicts for the photos whose records are given; stops early when cancelled
        or past ``deadline`` (time.monotonic())."""
        ...

    def fuse(self, prior: np.ndarray, match: np.ndarray) -> np.ndarray:
        """Final scores from the shortlist's ``prior`` (see ``prior_kind``) and this
        re-ranker's ``match`` confidences; ``fuse`` below is the default."""
        ...


# Fusion ------------------------------------------------------------------------------------

# How much the shortlist's own order still counts once a photo has been verified. Small:
# verified geometry is far stronger evidence than a global similarity, which mainly breaks
# ties between photos with similar support. Tuned on the instance benchmark (README).
PRIOR_WEIGHT = 0.15


def normalise_prior(scores: np.ndarray) -> np.ndarray:
    """Shortlist scores to [0, 1] by rank, so global cosines and ASMK similarities (very
    different scales) can be fused alike."""
    n = len(scores)
    if n == 0:
        return scores.astype(np.float32)
    ranks = np.empty(n, np.float32)
    ranks[np.argsort(-scores, kind="stable")] = np.arange(n, dtype=np.float32)
    return np.asarray(1.0 - ranks / max(n, 1), dtype=np.float32)


def fuse(prior: np.ndarray, match: np.ndarray) -> np.ndarray:
    """Final scores: the re-ranker's match confidence, then the shortlist's order."""
    return np.asarray(match + PRIOR_WEIGHT * prior, dtype=np.float32)
