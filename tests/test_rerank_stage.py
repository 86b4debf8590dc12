"""The re-rank stage's service: the order it returns when it finishes, and when it stops
early (out of time or cancelled)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from imagesearch.core.rerank import Evidence, RerankOutcome, fuse
from imagesearch.services.reranking import RerankService


class FakeCatalog:
    """Records in photo-id order, as SQL returns them."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = sorted(ids)

    def features(self, ids: list[int], kind: str) -> dict[int, bytes]:
        return {i: b"x" for i in self.ids if i in ids}

    def drop_features(self, ids: list[int], kind: str) -> None:
        raise AssertionError("nothing is damaged here")


class HalfWay:
    """Judges records in the order given, each a clear non-match, and stops half-way."""

    name = "half"
    data_kind = "test"
    prior_kind: str

    def __init__(self, prior_kind: str = "rank", logit_match: float = 0.0) -> None:
        self.prior_kind = prior_kind
        self.match = logit_match
        self.seen: list[int] = []

    def prepare(self, image: Any) -> Any:
        return None

    def score(self, query: Any, records: Mapping[int, bytes], cancel: threading.Event,
              deadline: float | None = None) -> RerankOutcome:
        outcome = RerankOutcome(complete=False)
        for photo_id in list(records)[:len(records) // 2]:
            self.seen.append(photo_id)
            outcome.evidence[photo_id] = Evidence(-3.0, self.match)
        return outcome

    def fuse(self, prior: np.ndarray, match: np.ndarray) -> np.ndarray:
        if self.prior_kind == "global":  # AMES-like: a rejected photo still gains
            return 0.35 * prior + 0.65 * (match + 0.05)
        return fuse(prior, match)


SHORTLIST = [(10, 0.9), (9, 0.8), (8, 0.7), (7, 0.6), (6, 0.5),
             (5, 0.4), (4, 0.3), (3, 0.2), (2, 0.1), (1, 0.05)]


@pytest.mark.parametrize("prior_kind", ["rank", "global"])
def test_a_run_stopped_early_judges_the_best_first_and_keeps_the_rest_below(
        prior_kind: str) -> None:
    reranker = HalfWay(prior_kind)
    service = RerankService(FakeCatalog([i for i, _ in SHORTLIST]), [reranker])  # type: ignore[arg-type, list-item]
    out = service.rerank(reranker, None, SHORTLIST,  # type: ignore[arg-type]
                         global_scores=dict(SHORTLIST))
    assert not out.complete
    assert reranker.seen == [10, 9, 8, 7, 6]  # the shortlist's best, not the lowest ids
    assert out.ids == [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    assert all(a >= b for a, b in zip(out.scores, out.scores[1:], strict=False))


def test_a_verified_photo_moves_up_within_the_part_judged() -> None:
    class Verifies(HalfWay):
        def score(self, query: Any, records: Mapping[int, bytes], cancel: threading.Event,
                  deadline: float | None = None) -> RerankOutcome:
            outcome = super().score(query, records, cancel, deadline)
            outcome.evidence[7] = Evidence(30.0, 1.0)
            return outcome

    reranker = Verifies()
    service = RerankService(FakeCatalog([i for i, _ in SHORTLIST]), [reranker])  # type: ignore[arg-type, list-item]
    out = service.rerank(reranker, None, SHORTLIST)  # type: ignore[arg-type]
    assert out.ids[0] == 7 and out.ids[5:] == [5, 4, 3, 2, 1]
