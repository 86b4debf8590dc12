"""Catalog and index stay right when things happen at the same time or go half wrong."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from imagesearch.core.vector_index import VectorIndex
from imagesearch.services import indexing as indexing_mod
from imagesearch.services.scanning import walk as real_walk
from imagesearch.storage.catalog import PhotoUpdate
from tests.conftest import noise_jpeg


def test_searching_while_the_index_changes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(4000, 64)).astype(np.float32)
    index = VectorIndex.build(np.arange(4000), vecs, 64, "m", 0)
    stop = threading.Event()
    errors: list[BaseException] = []

    writes = 0

    def writer() -> None:
        nonlocal writes
        next_id = 10_000
        try:
            while not stop.is_set():
                index.add(np.arange(next_id, next_id + 64), vecs[:64])
                index.remove(np.arange(next_id - 32, next_id + 32))
                next_id += 64
                writes += 1
        except BaseException as exc:  # the writer's failures count as much as the reader's
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    searches = 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            _, ids = index.search(vecs[:4], 10)
            assert ids.shape == (4, 10)
            searches += 1
    except BaseException as exc:  # pragma: no cover - reported below
        errors.append(exc)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert writes and searches  # both sides really ran, side by side
    # What is left is exactly what the adds and removes add up to: each round's second
    # half is removed by the next round, so only the last round's stays.
    last = 10_000 + 64 * (writes - 1)
    expected = np.concatenate([np.arange(4000), np.arange(last + 32, last + 64)])
    assert np.array_equal(np.sort(index.ids()), expected) and len(index) == len(expected)


def test_unreadable_subfolder_keeps_its_photos(context, tmp_path: Path,  # type: ignore[no-untyped-def]
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "lib"
    for i in range(2):
        noise_jpeg(root / "sub" / f"{i}.jpg", i)
    noise_jpeg(root / "top.jpg", 9)
    context.library.add_folder(root)
    assert context.indexing.run().added == 3
    real_scandir = os.scandir

    def flaky_scandir(path):  # type: ignore[no-untyped-def]
        if Path(path).name == "sub":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", flaky_scandir)
    report = context.indexing.run()
    assert report.removed == 0
    assert sum(context.catalog.counts().values()) == 3


def test_empty_mount_point_is_offline_not_emptied(context, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "share"
    for i in range(3):
        noise_jpeg(root / f"{i}.jpg", i)
    context.library.add_folder(root)
    context.indexing.run()
    for f in root.iterdir():
        f.unlink()  # the share is unmounted: its mount point is still there, empty
    report = context.indexing.run()
    assert report.removed == 0 and report.offline_folders == (root.resolve(),)
    assert sum(context.catalog.counts().values()) == 3
    assert not context.library.folders()[0].online


def test_file_stored_by_the_watcher_during_a_scan_is_kept(context, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "lib"
    noise_jpeg(root / "old.jpg", 1)
    context.library.add_folder(root)
    context.indexing.run()
    late = root / "late.jpg"

    def walk_then_a_new_file_arrives(*args, **kwargs):  # type: ignore[no-untyped-def]
        yield from real_walk(*args, **kwargs)
        noise_jpeg(late, 2)
        context.indexing.update_paths([late])  # what the live watcher does meanwhile

    monkeypatch.setattr(indexing_mod, "walk", walk_then_a_new_file_arrives)
    report = context.indexing.run()
    assert report.removed == 0
    assert context.library.photo(late.resolve()) is not None


def test_another_model_keeps_its_vectors(context, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fid = context.catalog.add_folder(tmp_path)
    v = np.ones(8, np.float32) / np.sqrt(8)

    def update(vec: np.ndarray, content_hash: str = "abc") -> PhotoUpdate:
        return PhotoUpdate(tmp_path / "a.jpg", fid, 1, 1.0, content_hash, vector=vec)

    (pid,) = context.catalog.store("model-A", [update(v)])
    context.catalog.store("model-B", [update(-v)])  # same bytes, second model
    assert context.catalog.vector(pid, "model-A") is not None
    assert context.catalog.vector(pid, "model-B") is not None
    context.catalog.store("model-B", [update(v, content_hash="new bytes")])  # edited file
    assert context.catalog.vector(pid, "model-A") is None


def test_removing_a_folder_while_it_is_indexed(context, tmp_path: Path,  # type: ignore[no-untyped-def]
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "lib"
    for i in range(4):
        noise_jpeg(root / f"{i}.jpg", i)
    context.library.add_folder(root)

    def walk_then_remove(*args, **kwargs):  # type: ignore[no-untyped-def]
        yield from real_walk(*args, **kwargs)
        context.library.remove_folder(root.resolve())  # the user clicks Remove meanwhile

    monkeypatch.setattr(indexing_mod, "walk", walk_then_remove)
    report = context.indexing.run()
    assert report.failed == 0
    assert sum(context.catalog.counts().values()) == 0
    index = context.vectors.index()
    assert index is None or len(index) == 0


def test_writes_from_another_process_are_noticed(context, settings, shared_encoder,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path) -> None:
    from imagesearch.services.context import build_context

    root = tmp_path / "lib"
    noise_jpeg(root / "a.jpg", 1)
    context.library.add_folder(root)
    context.indexing.run()
    assert len(context.vectors.index()) == 1
    other = build_context(settings, encoder=shared_encoder)  # e.g. the CLI, while the app runs
    try:
        noise_jpeg(root / "b.jpg", 2)
        other.indexing.run()
    finally:
        other.close()
    with context.lane:
        refreshed = context.vectors.refresh()
    assert refreshed is not None and len(refreshed) == 2
