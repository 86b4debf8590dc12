"""Crash safety: a killed indexer, a failed index save and a damaged index file all leave
a library that opens cleanly, with the catalog as the source of truth."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagesearch.config import Settings
from imagesearch.core.vector_index import VectorIndex, load_saved
from imagesearch.domain import PhotoStatus
from imagesearch.services.vector_store import index_path
from tests.conftest import noise_jpeg
from tests.tiny_model import TINY_MODEL_ID

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent
STORE_LOG = "imagesearch.services.vector_store"


def jpeg(path: Path, seed: int, size: int = 48) -> Path:
    return noise_jpeg(path, seed, size)


# Killing a real indexing process ---------------------------------------------------------

class Library:
    """A library folder driven by `imagesearch index` subprocesses and read back in-process."""

    def __init__(self, base: Path, models_dir: Path, encoder: Any) -> None:
        self.dir = base / "library"
        self.photos = base / "photos"
        self.models_dir = models_dir
        self.encoder = encoder
        self.dir.mkdir(parents=True)
        (self.dir / "settings.json").write_text(json.dumps(
            {"batch_size": 8, "decode_workers": 1, "precision": "fp32"}))
        self.settings = Settings.load(self.dir, models_dir=models_dir, model_id=TINY_MODEL_ID)

    def start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ, IMAGESEARCH_MODELS=str(self.models_dir), HF_HUB_OFFLINE="1",
                   PYTHONPATH=str(REPO))
        env.pop("IMAGESEARCH_HOME", None)
        return subprocess.Popen(
            [sys.executable, "-m", "imagesearch.cli.main", "--library", str(self.dir),
             "--model", TINY_MODEL_ID, "index", str(self.photos), "--no-progress"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)

    def sql(self, query: str, *args: object) -> list[tuple[Any, ...]]:
        if not self.settings.catalog_path.exists():
            return []
        uri = f"file:{self.settings.catalog_path}?mode=ro"
        try:
            with sqlite3.connect(uri, uri=True, timeout=10) as conn:
                return conn.execute(query, args).fetchall()
        except sqlite3.OperationalError:
            return []  # not created yet

    def stored(self) -> int:
        rows = self.sql("SELECT count(*) FROM photos")
        return int(rows[0][0]) if rows else 0

    def check(self) -> set[bytes]:
        """Everything that must hold after any crash; returns the indexed photo paths."""
        from imagesearch.services.context import build_context

        if self.settings.catalog_path.exists():
            with sqlite3.connect(self.settings.catalog_path) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        dup = self.sql("SELECT path, count(*) FROM photos GROUP BY path HAVING count(*) > 1")
        assert dup == [], f"paths stored twice: {dup}"
        ctx = build_context(self.settings, encoder=self.encoder)
        try:
            model = ctx.models.model_id
            catalog_ids = np.sort(ctx.catalog.vector_ids(model))
            generation = ctx.catalog.generation()
            index = ctx.vectors.index()
            faiss_ids = np.zeros(0, np.int64) if index is None else np.sort(index.ids())
            assert len(np.unique(faiss_ids)) == len(faiss_ids), "duplicate ids in the index"
            assert np.array_equal(faiss_ids, catalog_ids)
            # Status and vectors agree: indexed <=> has a vector.
            with_vector = set(int(i) for i in catalog_ids)
            rows = self.sql("SELECT id, path, status FROM photos")
            for pid, _path, status in rows:
                assert (status == PhotoStatus.INDEXED.value) == (pid in with_vector), status
        finally:
            ctx.close()
        if index is not None:
            # Opened and closed: the file on disk is consistent with the catalog.
            on_disk = load_saved(ctx.vectors.path).index  # the base and its delta log
            assert on_disk.generation == generation
            assert np.array_equal(np.sort(on_disk.ids()), catalog_ids)
        return {bytes(path) for _pid, path, status in rows
                if status == PhotoStatus.INDEXED.value}


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with contextlib.suppress(ProcessLookupError):  # its decode workers, if any outlive it
        os.killpg(proc.pid, signal.SIGKILL)


def wait_until(proc: subprocess.Popen[bytes], predicate: Callable[[], bool],
               timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
        tmp_path: Path, models_dir: Path, shared_encoder: Any) -> None:
    seed = int(os.environ.get("IMAGESEARCH_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    lib = Library(tmp_path, models_dir, shared_encoder)
    count = 150
    for i in range(count):
        jpeg(lib.photos / f"roll{i % 3}" / f"p{i:03d}.jpg", i)
    indexed: set[bytes] = set()
    kills = 0
    for round_no in range(5):
        proc = lib.start()
        before = lib.stored()
        if round_no == 0:
            time.sleep(rng.uniform(0.5, 3.0))  # anywhere: start-up, migration, first batch
        elif round_no < 4:
            # At a random point of this run's indexing, between or during commits.
            target = before + rng.randint(1, max(1, (count - before) // 2))
            wait_until(proc, lambda t=target: lib.stored() >= t, timeout=60)
            time.sleep(rng.uniform(0.0, 0.03))
        else:
            # Right after the last commit: while the index file is being saved.
            wait_until(proc, lambda: lib.stored() >= count, timeout=60)
        if proc.poll() is not None:
            continue  # finished before the kill: nothing left to interrupt
        kill(proc)
        kills += 1
        now = lib.check()
        print(f"seed {seed} round {round_no}: killed with {len(now)} of {count} indexed")
        assert indexed <= now, f"seed {seed}: indexed photos were lost after a kill"
        indexed = now
    assert kills >= 3, f"seed {seed}: the indexer finished before it could be killed"
    assert indexed, f"seed {seed}: no kill happened after the first commit"
    proc = lib.start()
    out = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert proc.returncode == 0, out
    final = lib.check()
    assert len(final) == count and indexed <= final
    rows = lib.sql("SELECT count(*), count(DISTINCT path), count(DISTINCT content_hash) "
                   "FROM photos")
    assert rows == [(count, count, count)]
    # And once more: everything is already there, nothing is embedded again.
    proc = lib.start()
    out = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert f"0 added, 0 updated, 0 moved, 0 removed, 0 failed, {count} unchanged" in out


# A failing save -------------------------------------------------------------------------

@pytest.fixture
def indexed_library(settings: Settings, shared_encoder: Any,
                    tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    from imagesearch.services.context import build_context

    # The index file written as each run ends, as the CLI does (the app debounces it).
    context = build_context(settings, encoder=shared_encoder, save_delay_s=0.0)
    root = tmp_path / "photos"
    for i in range(6):
        jpeg(root / f"p{i}.jpg", i)
    context.library.add_folder(root)
    assert context.indexing.run().added == 6
    yield context, root
    context.close()


def test_failed_index_save_keeps_the_previous_file_and_rebuilds_next_time(
        indexed_library: tuple[Any, Path], make_settings: Callable[..., Settings],
        shared_encoder: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from imagesearch.core import index_file
    from imagesearch.errors import IndexFileError
    from imagesearch.services.context import build_context

    ctx, root = indexed_library
    path = ctx.vectors.path
    previous = path.read_bytes()
    real_replace = os.replace

    def disk_full(src: Any, dst: Any) -> None:
        if Path(dst) == path:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    def append_on_full_disk(log: Path, changes: object) -> int:
        raise IndexFileError(f"could not save the search index's changes to {log}: "
                             "No space left on device")

    monkeypatch.setattr(index_file.os, "replace", disk_full)
    monkeypatch.setattr("imagesearch.services.vector_store.append_changes",
                        append_on_full_disk)
    new = jpeg(root / "new.jpg", 100)
    report = ctx.indexing.run()
    assert report.added == 1
    assert path.read_bytes() == previous  # the old file is untouched
    assert list(path.parent.glob("*.tmp")) == []  # and no half-written file lingers
    assert len(ctx.indexing.warnings) == 1
    assert "could not save the search index" in ctx.indexing.warnings[0]
    assert "No space left on device" in ctx.indexing.warnings[0]
    assert report.warnings == tuple(ctx.indexing.warnings)  # what the CLI and GUI show
    new_id = ctx.library.photo(new).id
    assert new_id in ctx.vectors.index().ids()  # searchable now, from memory
    assert ctx.catalog.vector(new_id, ctx.models.model_id) is not None  # and in the truth
    # Closing tries once more (the disk is still full): it says so, and loses nothing.
    closing = ctx.close()
    assert len(closing) == 1 and "No space left on device" in closing[0]
    assert path.read_bytes() == previous
    monkeypatch.undo()

    caplog.set_level(logging.INFO, logger=STORE_LOG)
    again = build_context(make_settings(), encoder=shared_encoder)
    try:
        index = again.vectors.index()
        assert index is not None and new_id in index.ids()
        assert sorted(index.ids()) == sorted(again.catalog.vector_ids(again.models.model_id))
        reason = again.vectors.last_rebuild_reason
        assert reason is not None and "generation" in reason
        assert any("rebuilding the search index" in r.getMessage() and reason in r.getMessage()
                   for r in caplog.records)
        generation = again.catalog.generation()
    finally:
        again.close()
    assert VectorIndex.load(path).generation == generation  # the rebuilt file, written on close


def test_failed_save_is_reported_by_the_cli(
        indexed_library: tuple[Any, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from imagesearch.cli.main import main
    from imagesearch.errors import IndexFileError

    ctx, root = indexed_library
    ctx.close()

    def refuse(path: Path, data: bytes) -> None:
        raise IndexFileError(f"could not save the search index to {path}: Permission denied")

    def refuse_append(path: Path, changes: object) -> int:
        raise IndexFileError(f"could not save the search index's changes to {path}: "
                             "Permission denied")

    monkeypatch.setattr("imagesearch.services.vector_store.write_index_file", refuse)
    monkeypatch.setattr("imagesearch.services.vector_store.append_changes", refuse_append)
    monkeypatch.setenv("IMAGESEARCH_MODELS", str(ctx.settings.models_dir))
    (ctx.settings.library_dir / "settings.json").write_text(json.dumps(
        {"decode_workers": 1, "precision": "fp32"}))
    jpeg(root / "late.jpg", 200)
    assert main(["--library", str(ctx.settings.library_dir), "--model", TINY_MODEL_ID,
                 "index", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "1 added" in captured.out
    assert "warning: could not save the search index" in captured.err
    assert "Permission denied" in captured.err


# A damaged or stale index file ----------------------------------------------------------

def _stale(path: Path, index: VectorIndex) -> None:
    index.generation -= 1
    index.save(path)


def _truncated(path: Path, index: VectorIndex) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path, index: VectorIndex) -> None:
    path.write_bytes(os.urandom(2048))


def _other_ids(path: Path, index: VectorIndex) -> None:
    ids = index.ids()
    vectors = np.eye(len(ids), index.dim, dtype=np.float32)
    VectorIndex.build(ids + 1000, vectors, index.dim, index.model_id,
                      index.generation).save(path)


def _fewer(path: Path, index: VectorIndex) -> None:
    index.remove(index.ids()[:2])
    index.save(path)


def _flipped_byte(path: Path, index: VectorIndex) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def _swapped_vectors(path: Path, index: VectorIndex) -> None:
    # Same ids, same generation, other vectors: what a file claiming a generation it does
    # not hold (another process re-embedded photos meanwhile) looks like.
    ids = np.sort(index.ids())
    vectors = index.vectors_of(ids)
    VectorIndex.build(ids, vectors[::-1].copy(), index.dim, index.model_id,
                      index.generation).save(path)


def _other_model(path: Path, index: VectorIndex) -> None:
    index.model_id = "ViT-B-32/openai"
    index.save(path)


def _missing(path: Path, index: VectorIndex) -> None:
    path.unlink()


@pytest.mark.parametrize(("damage", "why"), [
    (_stale, "generation"),
    (_truncated, "damaged"),
    (_garbage, "not an imagesearch index file"),
    (_other_ids, "ids differ"),
    (_fewer, "holds 4 vectors, the catalog 6"),
    (_flipped_byte, "checksum"),
    (_swapped_vectors, "vectors differ"),
    (_other_model, "for model ViT-B-32/openai"),
    (_missing, "no index file yet"),
])
def test_damaged_index_file_is_rebuilt_with_the_reason_logged(
        indexed_library: tuple[Any, Path], make_settings: Callable[..., Settings],
        shared_encoder: Any, caplog: pytest.LogCaptureFixture,
        damage: Callable[[Path, VectorIndex], None], why: str) -> None:
    from imagesearch.services.context import build_context

    ctx, _ = indexed_library
    path = ctx.vectors.path
    assert path == index_path(ctx.settings.index_dir, TINY_MODEL_ID)
    expected = sorted(int(i) for i in ctx.catalog.vector_ids(ctx.models.model_id))
    damage(path, VectorIndex.load(path))
    ctx.close()

    caplog.set_level(logging.INFO, logger=STORE_LOG)
    again = build_context(make_settings(), encoder=shared_encoder)
    try:
        index = again.vectors.index()
        assert index is not None and sorted(int(i) for i in index.ids()) == expected
        reason = again.vectors.last_rebuild_reason
        assert reason is not None and why in reason
        assert [r for r in caplog.records
                if r.name == STORE_LOG and "rebuilding" in r.getMessage()
                and why in r.getMessage()]
        generation = again.catalog.generation()
    finally:
        again.close()
    reloaded = VectorIndex.load(path)  # the rebuilt file was written back on close
    assert sorted(int(i) for i in reloaded.ids()) == expected
    assert reloaded.generation == generation


def test_consistent_index_file_is_not_rebuilt(
        indexed_library: tuple[Any, Path], make_settings: Callable[..., Settings],
        shared_encoder: Any, caplog: pytest.LogCaptureFixture) -> None:
    from imagesearch.services.context import build_context

    ctx, _ = indexed_library
    before = ctx.vectors.path.read_bytes()
    ctx.close()
    caplog.set_level(logging.INFO, logger=STORE_LOG)
    again = build_context(make_settings(), encoder=shared_encoder)
    try:
        assert again.vectors.index() is not None
        assert again.vectors.last_rebuild_reason is None
        assert not [r for r in caplog.records if "rebuilding" in r.getMessage()]
        assert again.vectors.path.read_bytes() == before
    finally:
        again.close()


def test_leftover_temp_files_from_a_killed_save_are_cleaned(
        indexed_library: tuple[Any, Path], make_settings: Callable[..., Settings],
        shared_encoder: Any) -> None:
    from imagesearch.services.context import build_context

    ctx, _ = indexed_library
    path = ctx.vectors.path
    ctx.close()
    old = path.with_name(path.name + ".abc123.tmp")
    fresh = path.with_name(path.name + ".def456.tmp")
    old.write_bytes(b"half an index")
    fresh.write_bytes(b"another process saving now")
    day_ago = time.time() - 86400
    os.utime(old, (day_ago, day_ago))
    again = build_context(make_settings(), encoder=shared_encoder)
    try:
        assert again.vectors.index() is not None
        assert not old.exists() and fresh.exists()
    finally:
        again.close()
