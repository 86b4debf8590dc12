"""The re-rank stage: which re-ranker runs, on what, for how long, and how it is fused."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagesearch.core.rerank import Evidence, Reranker, normalise_prior

if TYPE_CHECKING:
    from imagesearch.storage.catalog import Catalog

log = logging.getLogger(__name__)

# CPU time a re-rank may take before it returns what it has (the photos it did not reach
# keep their order, after those it did).
DEFAULT_BUDGET_S = 5.0


@dataclass
class Reranked:
    """The shortlist in its new order, with each photo's evidence."""

    ids: list[int]
    scores: list[float]  # fused
    prior: dict[int, float]  # the shortlist's own scores
    evidence: dict[int, Evidence] = field(default_factory=dict)
    complete: bool = True
    stage: str = ""


class RerankService:
    """Runs a re-ranker over a shortlist; verified photos move up, the rest keep order."""

    def __init__(self, catalog: Catalog, rerankers: Sequence[Reranker]) -> None:
        self.catalog = catalog
        self.rerankers = {r.name: r for r in rerankers}

    def get(self, name: str) -> Reranker | None:
        return self.rerankers.get(name)

    def prepare(self, reranker: Reranker, image: Path | bytes) -> Any:
        """The query side (features), once per query. Raises ValueError for a bad image."""
        return reranker.prepare(image)

    def rerank(self, reranker: Reranker, query: Any, shortlist: Sequence[tuple[int, float]],
               cancel: threading.Event | None = None,
               budget_s: float | None = DEFAULT_BUDGET_S,
               global_scores: Mapping[int, float] | None = None) -> Reranked:
        """Re-order ``shortlist`` ((photo id, score) best first) by the re-ranker's verdicts.

        Args:
            global_scores: each shortlisted photo's global cosine with the query, for a
                re-ranker whose ``prior_kind`` is "global"; without a score for every
                photo, the rank-normalised shortlist stands in.

        A cancelled or over-budget run returns what it has, marked incomplete.
        """
        cancel = cancel or threading.Event()
        ids = [pid for pid, _ in shortlist]
        prior_scores = np.asarray([s for _, s in shortlist], dtype=np.float32)
        prior = dict(zip(ids, prior_scores.tolist(), strict=True))
        fused_prior = normalise_prior(prior_scores)
        if reranker.prior_kind == "global" and global_scores is not None \
                and all(i in global_scores for i in ids):
            fused_prior = np.asarray([global_scores[i] for i in ids], dtype=np.float32)
        found = self.catalog.features(ids, reranker.data_kind)
        # In the shortlist's order: a run that stops early has seen its best part.
        records = {i: found[i] for i in ids if i in found}
        deadline = time.monotonic() + budget_s if budget_s is not None else None
        outcome = reranker.score(query, records, cancel, deadline)
        if outcome.damaged:
            # Recomputed by the next indexing run; search goes on without them.
            log.warning("%d damaged local-feature records dropped", len(outcome.damaged))
            self.catalog.drop_features(outcome.damaged, reranker.data_kind)
        match = np.asarray([outcome.evidence[i].match if i in outcome.evidence else 0.0
                            for i in ids], dtype=np.float32)
        final = reranker.fuse(fused_prior, match)
        if outcome.complete:
            order = np.argsort(-final, kind="stable")
        else:
            order = _seen_first(final, [i in outcome.evidence for i in ids])
        return Reranked([ids[i] for i in order], [float(final[i]) for i in order], prior,
                        outcome.evidence, outcome.complete, reranker.name)


def _seen_first(final: np.ndarray, seen: list[bool]) -> np.ndarray:
    """The order of a run that stopped early, writing the unseen photos' scores in place.

    The photos up to the last one the re-ranker judged (a prefix of the shortlist, as it
    walks it in order) are sorted by their fused scores; the rest keep the shortlist's
    order after them, with scores no higher than the prefix's lowest, so a photo the
    re-ranker never reached is neither promoted nor demoted below one it rejected.
    """
    reached = max((n + 1 for n, s in enumerate(seen) if s), default=0)
    head = np.argsort(-final[:reached], kind="stable")
    tail = np.arange(reached, len(final))
    if len(tail):
        if reached:
            final[tail] = np.minimum(final[tail], float(final[:reached].min()))
        final[tail] = np.minimum.accumulate(final[tail])  # scores never rise down the list
    return np.concatenate([head, tail]).astype(np.int64)
