"""Retrieval metrics against hand-computed cases."""

from __future__ import annotations

import pytest

from imagesearch.core.metrics import (
    average_precision,
    box_hits,
    f1,
    iou,
    precision_at,
    recall_at,
    summarise,
)


def test_average_precision_by_the_ilias_rule() -> None:
    # Positives at ranks 1 and 3: (1/1 + 2/3) / min(k, 2).
    assert average_precision([5, 7, 9, 1], {5, 9}, k=100) == pytest.approx((1 + 2 / 3) / 2)
    # Fewer than k results and a positive never found: still divided by min(k, 3).
    assert average_precision([5, 7], {5, 9, 11}, k=100) == pytest.approx(1 / 3)
    # k smaller than the number of positives: divided by k.
    assert average_precision([1, 2, 3], {1, 2, 3, 4}, k=2) == pytest.approx(1.0)
    # Empty results, and a query without positives.
    assert average_precision([], {1}, k=10) == 0.0
    assert average_precision([1, 2], set(), k=10) == 0.0


def test_junk_is_removed_before_counting() -> None:
    # Junk at rank 1: the positive moves up to rank 1.
    assert average_precision([8, 5], {5}, k=10, junk={8}) == pytest.approx(1.0)
    assert recall_at([8, 5], {5}, 1, junk={8}) == 1.0
    assert precision_at([8, 5, 6], {5}, 2, junk={8}) == pytest.approx(0.5)


def test_ties_and_repeats_count_once() -> None:
    # A repeated positive is not a second hit.
    assert average_precision([5, 5, 9], {5, 9}, k=10) == pytest.approx(1.0)
    assert recall_at([5, 5], {5, 9}, 10) == 0.5


def test_precision_recall_f1() -> None:
    ranking = [1, 2, 3, 4]
    assert precision_at(ranking, {1, 3, 9}, 4) == pytest.approx(0.5)
    assert recall_at(ranking, {1, 3, 9}, 4) == pytest.approx(2 / 3)
    assert f1(0.5, 2 / 3) == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert f1(0.0, 0.0) == 0.0


def test_iou_and_box_hits() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    truth = {1: (0, 0, 10, 10), 2: (0, 0, 10, 10), 3: (0, 0, 10, 10)}
    predicted = {1: (0, 0, 10, 9), 2: (6, 6, 20, 20), 3: None}
    # 1 overlaps well, 2 badly, 3 has no box; 4 is not a positive with a box.
    assert box_hits([1, 2, 3, 4], predicted, truth, k=10) == (1, 3)
    assert box_hits([1, 2, 3], predicted, truth, k=1) == (1, 1)


def test_summary_over_queries() -> None:
    s = summarise([[1, 2], [3, 4]], [{1}, {4}], [set(), set()], [0.1, 0.3], k=2,
                  map_ks=[100])
    assert s.map_k[100] == pytest.approx(100 * (1 + 0.5) / 2)
    assert s.recall[1] == pytest.approx(50.0) and s.recall[10] == pytest.approx(100.0)
    assert s.precision_k == pytest.approx(50.0) and s.box_iou50 is None
    assert s.latency_p50_ms == pytest.approx(200.0)
