"""Incremental indexing through IndexingService.run: only what changed costs work."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagesearch.core.decode_pool import DecodeJob, DecodePool
from imagesearch.core.imaging import DecodedImage
from imagesearch.domain import PhotoStatus
from tests.conftest import noise_jpeg

pytestmark = pytest.mark.timeout(120)


def jpeg(path: Path, seed: int, size: int = 64) -> Path:
    return noise_jpeg(path, seed, size)


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path handed to the decode pool (the expensive step), in order."""
    seen: list[Path] = []
    real = DecodePool.decode

    def spy(self: DecodePool, jobs: Iterable[Path | DecodeJob], lookahead: int | None = None,
            **kwargs: Any) -> Generator[DecodedImage, None, None]:
        def record() -> Iterator[Path | DecodeJob]:
            for job in jobs:
                seen.append(job.path if isinstance(job, DecodeJob) else job)
                yield job
        return real(self, record(), lookahead, **kwargs)

    monkeypatch.setattr(DecodePool, "decode", spy)
    return seen


@pytest.fixture
def library(context: Any, tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i in range(4):
        jpeg(root / f"p{i}.jpg", i)
    for i in range(2):
        jpeg(root / "sub" / f"s{i}.jpg", 10 + i)
    context.library.add_folder(root)
    report = context.indexing.run()
    assert report.added == 6 and report.failed == 0
    return root


def vector_ids(ctx: Any) -> list[int]:
    return sorted(int(i) for i in ctx.catalog.vector_ids(ctx.models.model_id))


def faiss_ids(ctx: Any) -> list[int]:
    return sorted(int(i) for i in ctx.vectors.index().ids())


def test_unchanged_files_cost_a_stat_not_a_decode(context: Any, library: Path,
                                                  decoded: list[Path]) -> None:
    report = context.indexing.run()
    assert decoded == []
    assert report.unchanged == 6
    assert (report.added, report.updated, report.moved, report.removed) == (0, 0, 0, 0)
    # The same holds for a fresh process: a new context over the same catalog.
    from imagesearch.services.context import build_context

    again = build_context(context.settings, encoder=context.models.encoder())
    try:
        assert again.indexing.run().unchanged == 6
    finally:
        again.close()
    assert decoded == []


def test_only_new_files_are_decoded(context: Any, library: Path, decoded: list[Path]) -> None:
    new = jpeg(library / "sub" / "new.jpg", 99)
    report = context.indexing.run()
    assert decoded == [new]
    assert report.added == 1 and report.unchanged == 6


def test_move_keeps_identity_and_vector(context: Any, library: Path,
                                        decoded: list[Path]) -> None:
    model = context.models.model_id
    src = library / "p1.jpg"
    before = context.library.photo(src)
    vector = context.catalog.vector(before.id, model)
    dst = library / "elsewhere" / "renamed.jpg"
    dst.parent.mkdir()
    os.rename(src, dst)
    report = context.indexing.run()
    assert report.moved == 1 and report.added == 0 and report.removed == 0
    assert decoded == []  # recognised by its content hash, not re-embedded
    after = context.library.photo(dst)
    assert after.id == before.id and after.status is PhotoStatus.INDEXED
    assert context.library.photo(src) is None
    assert np.array_equal(context.catalog.vector(after.id, model), vector)
    assert faiss_ids(context) == vector_ids(context)
    assert before.id in faiss_ids(context)


def test_deleted_files_leave_catalog_and_index(context: Any, library: Path,
                                               decoded: list[Path]) -> None:
    gone = [library / "p0.jpg", library / "sub" / "s1.jpg"]
    gone_ids = {context.library.photo(p).id for p in gone}
    for p in gone:
        p.unlink()
    report = context.indexing.run()
    assert report.removed == 2 and decoded == []
    assert all(context.library.photo(p) is None for p in gone)
    assert not gone_ids & set(vector_ids(context))
    assert not gone_ids & set(faiss_ids(context))
    assert len(faiss_ids(context)) == 4


def test_edited_file_is_reembedded(context: Any, library: Path, decoded: list[Path]) -> None:
    model = context.models.model_id
    path = library / "p2.jpg"
    before = context.library.photo(path)
    old = context.catalog.vector(before.id, model)
    jpeg(path, 1234, size=80)
    report = context.indexing.run()
    assert report.updated == 1 and report.added == 0
    assert decoded == [path]
    after = context.library.photo(path)
    assert after.id == before.id and (after.width, after.height) == (80, 80)
    assert after.content_hash != before.content_hash
    assert not np.array_equal(context.catalog.vector(after.id, model), old)
    assert faiss_ids(context) == vector_ids(context)


def test_touched_but_identical_file_is_reembedded_once(context: Any, library: Path,
                                                       decoded: list[Path]) -> None:
    # mtime changed, bytes not: the stat says "maybe edited", so it is decoded once,
    # and after that it is unchanged again.
    path = library / "p3.jpg"
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + 10))
    assert context.indexing.run().updated == 1
    assert context.indexing.run().unchanged == 6
    assert decoded == [path]


def test_missing_folder_is_offline_not_emptied(context: Any, library: Path, tmp_path: Path,
                                               decoded: list[Path]) -> None:
    ids_before = vector_ids(context)
    away = tmp_path / "unplugged"
    library.rename(away)
    report = context.indexing.run()
    assert report.offline_folders == (library,)
    assert report.removed == 0
    folder = context.library.folders()[0]
    assert not folder.online and folder.photo_count == 6
    assert vector_ids(context) == ids_before == faiss_ids(context)
    away.rename(library)
    report = context.indexing.run()
    assert report.offline_folders == () and report.unchanged == 6
    assert context.library.folders()[0].online
    assert decoded == []


def test_one_offline_folder_does_not_stop_the_others(context: Any, library: Path,
                                                     tmp_path: Path) -> None:
    other = tmp_path / "other"
    jpeg(other / "o.jpg", 50)
    context.library.add_folder(other)
    library.rename(tmp_path / "away")
    report = context.indexing.run()
    assert report.offline_folders == (library,) and report.added == 1
    assert context.library.photo(other / "o.jpg").status is PhotoStatus.INDEXED
    assert context.catalog.counts()[PhotoStatus.INDEXED] == 7


def test_failed_file_is_not_retried_until_changed_or_asked(context: Any, library: Path,
                                                           decoded: list[Path]) -> None:
    bad = library / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    assert context.indexing.run().failed == 1
    assert context.indexing.run().failed == 0
    assert decoded == [bad]
    jpeg(bad, 77)  # fixed on disk
    report = context.indexing.run()
    assert report.updated == 1 and report.failed == 0
    assert context.library.photo(bad).status is PhotoStatus.INDEXED


def test_retry_failed_reattempts(context: Any, library: Path, decoded: list[Path]) -> None:
    bad = library / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    context.indexing.run()
    report = context.indexing.retry_failed()
    assert decoded == [bad, bad] and report.failed == 1
    assert context.library.status(failures=5).failures[0].path == bad
