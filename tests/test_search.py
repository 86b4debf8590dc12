"""Indexing then searching through the services, with the tiny real open_clip model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imagesearch.domain import Query
from imagesearch.errors import FolderError, QueryError
from imagesearch.services.searching import split_negatives


def test_split_negatives() -> None:
    assert split_negatives('cat on a sofa -dog -"red ball"') == ("cat on a sofa",
                                                                  ["dog", "red ball"])
    assert split_negatives("well-known e-bike") == ("well-known e-bike", [])
    assert split_negatives("-only") == ("", ["only"])


@pytest.fixture
def indexed(context, photo_dir: Path):  # type: ignore[no-untyped-def]
    context.library.add_folder(photo_dir)
    report = context.indexing.run()
    assert report.added == 6 and report.failed == 0
    return context


def test_image_query_finds_itself_first(indexed, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    target = photo_dir / "trip" / "coffee.jpg"
    hits = indexed.search.search(Query(image=target, top_k=3))
    assert hits[0].path == target and hits[0].global_score == pytest.approx(1.0, abs=2e-3)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].width == 600 and hits[0].height == 400


def test_image_bytes_query(indexed, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    target = photo_dir / "trip" / "coffee.jpg"
    hits = indexed.search.search(Query(image=target.read_bytes(), top_k=1))
    assert hits[0].path == target


def test_text_and_combined_queries(indexed, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    text = indexed.search.query_vector(Query(text="a cup of coffee"))
    image = indexed.search.query_vector(Query(image=photo_dir / "trip" / "coffee.jpg"))
    both = indexed.search.query_vector(Query(text="a cup of coffee",
                                             image=photo_dir / "trip" / "coffee.jpg",
                                             image_weight=0.5))
    expected = (text + image) / np.linalg.norm(text + image)
    np.testing.assert_allclose(both, expected, atol=1e-5)
    assert len(indexed.search.search(Query(text="a cup of coffee", top_k=4))) == 4


def test_negative_terms_push_away(indexed) -> None:  # type: ignore[no-untyped-def]
    enc = indexed.models.encoder()
    plain = indexed.search.query_vector(Query(text="a cat"))
    negative = indexed.search.query_vector(Query(text="a cat -dog"))
    dog = enc.encode_texts(["dog"])[0]
    assert float(negative @ dog) < float(plain @ dog)


def test_folder_filter_and_more_like(indexed, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    hits = indexed.search.search(Query(text="photo", top_k=10, folder=photo_dir / "trip"))
    assert hits and all(h.path.parent == photo_dir / "trip" for h in hits)
    first = hits[0]
    similar = indexed.search.more_like(first.photo_id, 3)
    assert similar[0].photo_id == first.photo_id


def test_empty_queries_are_refused(indexed) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(QueryError):
        indexed.search.search(Query(text="   "))
    with pytest.raises(QueryError, match="not only"):
        indexed.search.search(Query(text="-dog"))


def test_unreadable_query_image(indexed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(QueryError, match="Cannot use that image"):
        indexed.search.search(Query(image=bad))


def test_remove_folder_empties_search(indexed, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    assert indexed.library.remove_folder(photo_dir) == 6
    assert indexed.search.search(Query(text="anything")) == []
    with pytest.raises(FolderError):
        indexed.library.remove_folder(photo_dir)


def test_index_survives_restart_without_rebuild(indexed, settings, shared_encoder,
                                                photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from imagesearch.services.context import build_context

    indexed.close()
    ctx = build_context(settings, encoder=shared_encoder)
    try:
        hits = ctx.search.search(Query(image=photo_dir / "chelsea.jpg", top_k=2))
        # skimage's "cat" is the same picture as "chelsea": either is a perfect match.
        assert {h.path for h in hits} == {photo_dir / "chelsea.jpg",
                                          photo_dir / "trip" / "cat.jpg"}
        assert hits[0].global_score == pytest.approx(1.0, abs=2e-3)
        assert ctx.vectors.last_rebuild_reason is None  # the saved file matched the catalog
    finally:
        ctx.close()


def test_add_folder_errors(context, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FolderError, match="does not exist"):
        context.library.add_folder(tmp_path / "nowhere")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(FolderError, match="not a folder"):
        context.library.add_folder(f)
