"""The live index and its file: written only after changes, debounced, never in a search's
way; in step with the catalog even when another process commits in between."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagesearch.config import Settings
from imagesearch.domain import PhotoStatus, Query
from imagesearch.services import vector_store
from imagesearch.storage.catalog import Catalog, PhotoUpdate
from imagesearch.storage.database import open_catalog_engine
from tests.conftest import noise_jpeg

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def open_context(settings: Settings, shared_encoder: Any) -> Iterator[Callable[..., Any]]:
    """Contexts over the test library with a chosen save delay; all closed afterwards."""
    from imagesearch.services.context import build_context

    made: list[Any] = []

    def make(save_delay_s: float) -> Any:
        ctx = build_context(settings, encoder=shared_encoder, save_delay_s=save_delay_s)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()


def library_of(ctx: Any, root: Path, count: int) -> Path:
    """``count`` noise photos in ``root``, added to the library and indexed."""
    for i in range(count):
        noise_jpeg(root / f"{i}.jpg", i)
    ctx.library.add_folder(root)
    assert ctx.indexing.run().added == count
    return root


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Times at which the index's files were written: a whole base, or an appended delta."""
    real_base, real_append = vector_store.write_index_file, vector_store.append_changes
    times: list[float] = []

    def base(path: Path, data: bytes) -> None:
        real_base(path, data)
        times.append(time.monotonic())

    def append(path: Path, changes: list[Any]) -> int:
        size = real_append(path, changes)
        times.append(time.monotonic())
        return size

    monkeypatch.setattr(vector_store, "write_index_file", base)
    monkeypatch.setattr(vector_store, "append_changes", append)
    return times


def test_unchanged_rescan_does_not_rewrite_the_index_file(
        open_context: Callable[..., Any], tmp_path: Path, writes: list[float]) -> None:
    ctx = open_context(0.0)  # written as each run ends, as the CLI does
    root = library_of(ctx, tmp_path / "photos", 3)
    assert len(writes) == 1
    before = os.stat(ctx.vectors.path)
    report = ctx.indexing.run()
    assert report.unchanged == 3 and report.embedded == 0
    assert len(writes) == 1  # nothing changed, nothing written
    after = os.stat(ctx.vectors.path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    noise_jpeg(root / "new.jpg", 9)
    assert ctx.indexing.run().added == 1
    assert len(writes) == 2  # a change is written...
    after = os.stat(ctx.vectors.path)
    # ...as a delta beside the base, which is not rewritten for one photo.
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert ctx.vectors.delta.stat().st_size > 0


def test_a_burst_of_changes_is_written_once_after_it_settles(
        open_context: Callable[..., Any], tmp_path: Path, writes: list[float]) -> None:
    ctx = open_context(0.4)
    root = tmp_path / "photos"
    root.mkdir()
    ctx.library.add_folder(root)
    for i in range(3):  # what the watcher does with three quick batches
        ctx.indexing.update_paths([noise_jpeg(root / f"{i}.jpg", i)])
    last_change = time.monotonic()
    deadline = time.monotonic() + 20
    while not writes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(writes) == 1 and writes[0] >= last_change + 0.3
    time.sleep(0.8)
    assert len(writes) == 1
    # The file written is the whole burst, so the next start needs no rebuild.
    from imagesearch.core.vector_index import VectorIndex

    assert len(VectorIndex.load(ctx.vectors.path)) == 3


def test_a_search_is_not_held_up_by_a_slow_save(
        open_context: Callable[..., Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = open_context(3600.0)
    library_of(ctx, tmp_path / "photos", 3)
    writing, release = threading.Event(), threading.Event()
    real = vector_store.write_index_file

    def slow_disk(path: Path, data: bytes) -> None:
        writing.set()
        release.wait(30)
        real(path, data)

    monkeypatch.setattr(vector_store, "write_index_file", slow_disk)
    saver = threading.Thread(target=ctx.vectors.flush)
    saver.start()
    try:
        assert writing.wait(10)
        hits: list[Any] = []
        searcher = threading.Thread(target=lambda: hits.extend(
            ctx.search.search(Query(text="noise", top_k=2))))
        searcher.start()
        searcher.join(10)
        assert not searcher.is_alive(), "the search waited for the index file to be written"
        assert len(hits) == 2 and not release.is_set()
    finally:
        release.set()
        saver.join()


def test_unsaved_changes_are_written_on_close(
        open_context: Callable[..., Any], tmp_path: Path, writes: list[float]) -> None:
    ctx = open_context(3600.0)
    library_of(ctx, tmp_path / "photos", 2)
    assert writes == []  # not yet: the delay is an hour
    assert ctx.close() == ()
    assert len(writes) == 1
    again = open_context(3600.0)
    index = again.vectors.index()
    assert index is not None and len(index) == 2
    assert again.vectors.last_rebuild_reason is None  # the next start does not rebuild


def test_a_photo_that_becomes_unreadable_leaves_the_live_index(
        open_context: Callable[..., Any], tmp_path: Path) -> None:
    ctx = open_context(3600.0)
    root = tmp_path / "photos"
    keep = noise_jpeg(root / "keep.jpg", 1)
    gone = noise_jpeg(root / "gone.jpg", 2)
    ctx.library.add_folder(root)
    ctx.indexing.run()
    photo_id = ctx.library.photo(gone).id
    assert photo_id in ctx.vectors.index().ids()
    gone.unlink()
    os.symlink(root / "elsewhere.jpg", gone)  # still listed, no longer readable
    report = ctx.indexing.run()
    assert report.failed == 1
    rec = ctx.library.photo(gone)
    assert rec.status is PhotoStatus.FAILED and rec.error == "broken symbolic link"
    assert photo_id not in ctx.vectors.index().ids()
    hits = ctx.search.search(Query(text="anything", top_k=10))
    assert [h.path for h in hits] == [keep]


def test_a_commit_from_another_process_in_between_is_not_claimed(
        open_context: Callable[..., Any], settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI commits between the app's index refresh and the app's own commit."""
    app = open_context(3600.0)
    root = tmp_path / "photos"
    noise_jpeg(root / "a.jpg", 1)
    app.library.add_folder(root)
    app.indexing.run()
    cli = Catalog(open_catalog_engine(settings.catalog_path))  # another process's engine
    model = app.models.model_id
    folder_id = app.library.folders()[0].id
    from_cli = root / "from-cli.jpg"
    vector = np.ones(app.models.encoder().dim, np.float32)
    real_store = app.catalog.store

    def cli_commits_first(model_id: str, updates: list[PhotoUpdate],
                          extractor: str | None = None) -> list[int]:
        cli.store(model, [PhotoUpdate(from_cli, folder_id, 1, 1.0, "cafe" * 8,
                                      vector=vector / np.linalg.norm(vector))])
        return real_store(model_id, updates, extractor)

    monkeypatch.setattr(app.catalog, "store", cli_commits_first)
    try:
        app.indexing.update_paths([noise_jpeg(root / "b.jpg", 2)])
    finally:
        cli.close()
    monkeypatch.undo()
    index = app.vectors.index()
    assert index is not None
    assert sorted(index.ids()) == sorted(app.catalog.vector_ids(model))
    assert app.library.photo(from_cli).id in index.ids()
    assert index.generation == app.catalog.generation()
