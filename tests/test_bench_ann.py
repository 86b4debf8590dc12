"""bench/ann.py on a tiny synthetic set: its figures have the properties they must have."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("annoy")

from bench import ann


@pytest.fixture(scope="module")
def rows() -> Iterator[dict[str, dict[str, object]]]:
    import faiss

    threads = faiss.omp_get_max_threads()  # the bench sets FAISS's threads process-wide
    try:
        base, xq, _ = ann.synthetic(3000, 50, 64, seed=0)
        params = ann.Params(k=10, threads=1, annoy_trees=20)
        found = ann.compare(base, xq, ann.FAMILIES, params, report=lambda _: None)
        yield {str(r["family"]): r for r in found}
    finally:
        faiss.omp_set_num_threads(threads)


def test_synthetic_vectors_are_unit_and_clustered() -> None:
    base, xq, info = ann.synthetic(2000, 20, 32, seed=3)
    assert base.shape == (2000, 32) and xq.shape == (20, 32)
    assert base.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(base, axis=1), 1.0, atol=1e-5)
    # Not uniform noise: random pairs share a direction, nearest neighbours are close.
    assert float(np.mean(base[:500] @ base[500:1000].T)) > 0.2
    assert float(np.median(np.max(xq @ base.T, axis=1))) > 0.8
    again, _, _ = ann.synthetic(2000, 20, 32, seed=3)
    assert np.array_equal(base, again) and info["clusters"] == 45


def test_every_family_reports_accuracy_and_costs(rows: dict[str, dict[str, object]]) -> None:
    assert set(rows) == set(ann.FAMILIES)
    flat = rows["flat"]
    assert flat["recall_at_k"] == flat["precision_at_k"] == flat["f1_at_k"] == 1.0
    assert flat["recall_at_1"] == flat["recall_at_5"] == 1.0
    for name in ("hnsw", "ivf-flat"):
        assert float(rows[name]["recall_at_k"]) > 0.8, rows[name]  # type: ignore[arg-type]
    assert float(rows["lsh"]["recall_at_k"]) < 1.0  # type: ignore[arg-type]
    for name, row in rows.items():
        assert int(row["size_bytes"]) > 0, name  # type: ignore[call-overload]
        assert float(row["build_s"]) >= 0, name  # type: ignore[arg-type]
        for key in ("p50_ms", "p95_ms", "batch_qps"):
            assert float(row[key]) > 0, (name, key)  # type: ignore[arg-type]
        for key in ("precision_at_k", "recall_at_k", "f1_at_k", "recall_at_5",
                    "recall_at_1"):
            assert 0.0 <= float(row[key]) <= 1.0  # type: ignore[arg-type]
    # Compression: the codes are smaller than the float32 vectors they stand for.
    assert int(rows["ivf-pq"]["size_bytes"]) < int(rows["flat"]["size_bytes"]) / 4  # type: ignore[call-overload]
    markdown = ann.ann_markdown(list(rows.values()))
    assert markdown.count("\n") == len(rows) + 1 and "| hnsw |" in markdown


def test_accuracy_counts_padding_as_not_returned() -> None:
    truth = np.array([[0, 1, 2, 3]])
    got = np.array([[0, 1, -1, -1]])
    acc = ann.accuracy(got, truth, 4)
    assert acc["precision_at_k"] == 1.0 and acc["recall_at_k"] == 0.5
    assert acc["f1_at_k"] == pytest.approx(2 / 3) and acc["recall_at_1"] == 1.0


def test_cost_table_marks_what_was_measured() -> None:
    base, _, _ = ann.synthetic(2000, 0, 32, seed=0)
    sizes = [1000, 10_000, 1_000_000]
    table = ann.costs(base, 32, sizes, 2000, ["flat", "hnsw"], ann.Params(threads=1),
                      image_rate=39.6, text_rate=200.0, text_assumed=True,
                      report=lambda _: None)
    build = table["build: flat"]
    assert build[1000].mark == "m" and build[1_000_000].mark == "x"
    assert build[10_000].mark == "x"
    assert table["build: hnsw"][1_000_000].value > 1000 * table["build: hnsw"][1000].value
    assert table["index file: flat"][1_000_000].value == pytest.approx(
        1000 * table["index file: flat"][1000].value)
    assert table["vectors, float32 (32 x 4 B)"][1_000_000].value == 1_000_000 * 32 * 4
    assert table["vectors, float32 (32 x 4 B)"][1_000_000].mark == "c"
    images = next(v for k, v in table.items() if k.startswith("image encoding"))
    texts = next(v for k, v in table.items() if k.startswith("text encoding"))
    assert images[1_000_000].value == pytest.approx(1_000_000 / 39.6)
    assert images[1_000_000].mark == "x" and texts[1000].mark == "a"
    markdown = ann.cost_markdown(table)
    assert "| 1K | 10K | 1M |" in markdown and "(x)" in markdown and "(m)" in markdown


def test_library_vectors_read_the_catalog(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with sqlite3.connect(tmp_path / "catalog.sqlite3") as db:
        db.execute("CREATE TABLE embeddings (photo_id INTEGER, model TEXT, vector BLOB)")
        db.executemany("INSERT INTO embeddings VALUES (?, ?, ?)",
                       [(i, "m/a", v.astype(np.float16).tobytes())
                        for i, v in enumerate(vectors)]
                       + [(1, "m/b", vectors[0].astype(np.float16).tobytes())])
    db.close()
    got, model = ann.library_vectors(tmp_path)
    assert model == "m/a" and got.shape == (40, 16)
    np.testing.assert_allclose(got, vectors, atol=2e-3)
    base, xq, held = ann.held_out(got, 100)
    assert held == 8 and len(base) == 32 and len(xq) == 8
