"""Retrieval metrics, computed the way the field reports them.

- mAP@k with the ILIAS rule: at each positive found within the top k, the precision at
  that rank; their sum divided by min(k, number of positives). Junk results are removed
  from the ranking before counting (as in the revisited Oxford and Paris protocol), so
  they neither help nor hurt.
- recall@k: the share of a query's positives found in its top k.
- precision, recall and F1 at k, as in the FAISS vs Annoy comparison: precision is the
  share of the top k that are positives.
- boxes: the share of positives in the top 10 whose predicted box overlaps the true box
  with IoU >= 0.5 (a positive without a predicted box counts as missed).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Box = Sequence[float]  # x0, y0, x1, y1


def _clean(ranking: Sequence[int], junk: Collection[int]) -> list[int]:
    """The ranking with junk removed and each item kept once (its first place)."""
    seen: set[int] = set()
    out = []
    for item in ranking:
        if item in junk or item in seen:
            continue
        seen.add(item)
        out.append(item)
    return out


def average_precision(ranking: Sequence[int], positives: Collection[int], k: int,
                      junk: Collection[int] = ()) -> float:
    """AP@k with the ILIAS normalisation; 0 for a query without positives."""
    if not positives or k <= 0:
        return 0.0
    hits, total = 0, 0.0
    for rank, item in enumerate(_clean(ranking, junk)[:k], start=1):
        if item in positives:
            hits += 1
            total += hits / rank
    return total / min(k, len(positives))


def recall_at(ranking: Sequence[int], positives: Collection[int], k: int,
              junk: Collection[int] = ()) -> float:
    if not positives:
        return 0.0
    found = sum(1 for item in _clean(ranking, junk)[:k] if item in positives)
    return found / len(positives)


def precision_at(ranking: Sequence[int], positives: Collection[int], k: int,
                 junk: Collection[int] = ()) -> float:
    if k <= 0:
        return 0.0
    found = sum(1 for item in _clean(ranking, junk)[:k] if item in positives)
    return found / k


def f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes; 0 for degenerate ones."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_hits(ranking: Sequence[int], predicted: Mapping[int, Box | None],
             truth: Mapping[int, Box], k: int = 10, junk: Collection[int] = ()
             ) -> tuple[int, int]:
    """(boxes with IoU >= 0.5, positives with a true box) among the top k."""
    good = counted = 0
    for item in _clean(ranking, junk)[:k]:
        if item not in truth:
            continue
        counted += 1
        box = predicted.get(item)
        if box is not None and iou(box, truth[item]) >= 0.5:
            good += 1
    return good, counted


@dataclass(frozen=True, slots=True)
class Summary:
    """One stage's figures over all queries (shares in percent)."""

    queries: int  # all of them; the means are over those with a positive
    map_k: dict[int, float]  # k -> mAP@k
    recall: dict[int, float]  # k -> recall@k
    precision_k: float
    recall_k: float
    f1_k: float
    box_iou50: float | None  # None: no true boxes to check
    latency_p50_ms: float
    latency_p95_ms: float


def summarise(rankings: Sequence[Sequence[int]], positives: Sequence[Collection[int]],
              junk: Sequence[Collection[int]], latencies_s: Sequence[float], k: int,
              map_ks: Sequence[int], recall_ks: Sequence[int] = (1, 10, 100),
              boxes: Sequence[tuple[Mapping[int, Box | None], Mapping[int, Box]]] = ()
              ) -> Summary:
    n = len(rankings)
    # A query with no positive at all says nothing about the ranking: left out of the
    # means, as the revisited Oxford/Paris evaluation does (counting it as 0 would
    # lower every stage alike and hide the differences).
    rows = [row for row in zip(rankings, positives, junk, strict=True) if row[1]]
    boxes = [b for b, pos in zip(boxes, positives, strict=False) if pos]

    def mean(values: list[float]) -> float:
        return 100.0 * float(np.mean(values)) if values else 0.0

    p = [precision_at(r, pos, k, j) for r, pos, j in rows]
    rk = [recall_at(r, pos, k, j) for r, pos, j in rows]
    good = counted = 0
    for (r, _, j), (predicted, truth) in zip(rows, boxes, strict=False):
        g, c = box_hits(r, predicted, truth, 10, j)
        good, counted = good + g, counted + c
    lat = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    return Summary(
        queries=n,
        map_k={m: mean([average_precision(r, pos, m, j) for r, pos, j in rows])
               for m in map_ks},
        recall={m: mean([recall_at(r, pos, m, j) for r, pos, j in rows]) for m in recall_ks},
        precision_k=mean(p), recall_k=mean(rk),
        f1_k=mean([f1(a, b) for a, b in zip(p, rk, strict=True)]),
        box_iou50=100.0 * good / counted if counted else None,
        latency_p50_ms=float(np.percentile(lat, 50)) if len(lat) else 0.0,
        latency_p95_ms=float(np.percentile(lat, 95)) if len(lat) else 0.0,
    )
