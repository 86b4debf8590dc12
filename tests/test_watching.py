"""FolderWatcher against real watchdog events on temporary folders, with the tiny model."""

from __future__ import annotations

import errno
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagesearch.domain import IndexReport, PhotoStatus
from imagesearch.errors import FolderError
from imagesearch.services.watching import FolderWatcher
from tests.conftest import noise_jpeg

pytestmark = [
    pytest.mark.timeout(60),
    # watchdog's own notice when a new folder is watched twice during a burst; harmless.
    pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning"),
]


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def jpeg(path: Path, seed: int, size: int = 64) -> Path:
    return noise_jpeg(path, seed, size)


class Spy:
    """Wraps IndexingService.update_paths to record every call's paths and time."""

    def __init__(self, indexing: Any) -> None:
        self.calls: list[tuple[float, list[Path]]] = []
        self._real = indexing.update_paths
        indexing.update_paths = self

    def __call__(self, paths: Iterable[Path], **kwargs: Any) -> IndexReport:
        paths = list(paths)
        self.calls.append((time.monotonic(), paths))
        result: IndexReport = self._real(paths, **kwargs)
        return result

    def counts(self) -> Counter[Path]:
        return Counter(p for _, paths in self.calls for p in paths)


class Rig:
    def __init__(self, ctx: Any, root: Path) -> None:
        self.ctx = ctx
        self.root = root
        self.reports: list[IndexReport] = []
        self.errors: list[Exception] = []
        self.spy = Spy(ctx.indexing)
        self.watcher: FolderWatcher | None = None

    def start(self, reconcile: bool = False, **kwargs: Any) -> FolderWatcher:
        options: dict[str, Any] = {"debounce_s": 0.2, "settle_s": 0.1}
        options.update(kwargs)
        self.watcher = FolderWatcher(self.ctx.indexing, self.ctx.library,
                                     on_report=self.reports.append,
                                     on_error=self.errors.append, **options)
        self.watcher.start(reconcile=reconcile)
        return self.watcher

    def photo(self, path: Path) -> Any:
        return self.ctx.library.photo(path)

    def indexed(self, path: Path) -> bool:
        rec = self.photo(path)
        return rec is not None and rec.status is PhotoStatus.INDEXED

    def faiss_ids(self) -> list[int]:
        # Under the write lane: a catalog commit and its index update are seen together.
        with self.ctx.lane:
            index = self.ctx.vectors.index()
            return [] if index is None else sorted(int(i) for i in index.ids())

    def photo_count(self) -> int:
        return sum(self.ctx.catalog.counts().values())


@pytest.fixture
def rig(context: Any, tmp_path: Path) -> Iterator[Rig]:
    root = tmp_path / "watched"
    root.mkdir()
    context.library.add_folder(root)
    r = Rig(context, root)
    yield r
    if r.watcher is not None:
        r.watcher.stop()


def test_new_file_is_indexed(rig: Rig) -> None:
    w = rig.start()
    assert w.is_running
    assert w.watched_paths() == [rig.root.resolve()]
    photo = jpeg(rig.root / "new.jpg", 1)
    wait_for(lambda: rig.indexed(photo), what="new.jpg indexed")
    rec = rig.photo(photo)
    assert rec.id in rig.faiss_ids()
    assert rig.errors == []
    wait_for(lambda: any(r.added == 1 for r in rig.reports), what="a report of the addition")


def test_rename_and_move_keep_identity(rig: Rig) -> None:
    first = jpeg(rig.root / "a.jpg", 2)
    rig.ctx.indexing.run()
    original = rig.photo(first)
    vector = rig.ctx.catalog.vector(original.id, rig.ctx.models.model_id)
    (rig.root / "sub").mkdir()
    rig.start()
    time.sleep(0.3)  # let the new folder's watch be in place before moving into it
    renamed = rig.root / "sub" / "b.jpg"
    first.rename(renamed)
    wait_for(lambda: rig.photo(renamed) is not None, what="rename followed")
    moved = rig.photo(renamed)
    assert moved.id == original.id
    assert rig.photo(first) is None
    assert np.array_equal(rig.ctx.catalog.vector(moved.id, rig.ctx.models.model_id), vector)
    assert rig.faiss_ids() == [original.id]
    assert renamed not in rig.spy.counts()  # followed as a move: nothing re-embedded
    wait_for(lambda: sum(r.moved for r in rig.reports) == 1, what="the move reported")


def test_rename_over_another_photo_replaces_it(rig: Rig) -> None:
    a, b = jpeg(rig.root / "a.jpg", 3), jpeg(rig.root / "b.jpg", 4)
    rig.ctx.indexing.run()
    a_id, b_id = rig.photo(a).id, rig.photo(b).id
    rig.start()
    a.replace(b)
    wait_for(lambda: rig.photo(a) is None and rig.photo(b) is not None
             and rig.photo(b).id == a_id, what="a.jpg renamed over b.jpg")
    assert rig.faiss_ids() == [a_id]
    assert b_id not in rig.ctx.catalog.vector_ids(rig.ctx.models.model_id)
    assert rig.errors == []


def test_folder_moved_within_keeps_identity_and_moved_in_is_indexed(
        rig: Rig, tmp_path: Path) -> None:
    inside = [jpeg(rig.root / "album" / f"{i}.jpg", 10 + i) for i in range(3)]
    rig.ctx.indexing.run()
    ids = {p.name: rig.photo(p).id for p in inside}
    outside = [jpeg(tmp_path / "elsewhere" / "trip" / f"{i}.jpg", 20 + i) for i in range(3)]
    rig.start()
    (rig.root / "album").rename(rig.root / "album-2024")
    (tmp_path / "elsewhere" / "trip").rename(rig.root / "trip")
    renamed = [rig.root / "album-2024" / p.name for p in inside]
    arrived = [rig.root / "trip" / p.name for p in outside]
    wait_for(lambda: all(rig.indexed(p) for p in renamed + arrived), what="folders followed")
    assert {p.name: rig.photo(p).id for p in renamed} == ids
    assert all(rig.photo(p) is None for p in inside)
    assert rig.photo_count() == 6
    assert not set(renamed) & set(rig.spy.counts())  # moved photos were not re-embedded


def test_delete_removes_from_catalog_and_index(rig: Rig) -> None:
    keep = jpeg(rig.root / "keep.jpg", 5)
    gone = jpeg(rig.root / "gone.jpg", 6)
    nested = [jpeg(rig.root / "old" / f"{i}.jpg", 30 + i) for i in range(2)]
    rig.ctx.indexing.run()
    gone_ids = [rig.photo(p).id for p in [gone, *nested]]
    rig.start()
    gone.unlink()
    for p in nested:
        p.unlink()
    (rig.root / "old").rmdir()
    wait_for(lambda: rig.photo_count() == 1, what="deleted photos forgotten")
    assert rig.photo(keep) is not None
    assert rig.faiss_ids() == [rig.photo(keep).id]
    assert not set(gone_ids) & set(rig.ctx.catalog.vector_ids(rig.ctx.models.model_id))


def test_edit_reembeds(rig: Rig) -> None:
    photo = jpeg(rig.root / "edit.jpg", 7)
    rig.ctx.indexing.run()
    before = rig.photo(photo)
    model = rig.ctx.models.model_id
    old_vector = rig.ctx.catalog.vector(before.id, model)
    rig.start()
    time.sleep(0.05)
    jpeg(photo, 8, size=96)
    wait_for(lambda: rig.photo(photo).size != before.size, what="edit re-indexed")
    after = rig.photo(photo)
    assert after.id == before.id and after.status is PhotoStatus.INDEXED
    assert (after.width, after.height) == (96, 96)
    assert not np.array_equal(rig.ctx.catalog.vector(after.id, model), old_vector)
    assert rig.faiss_ids() == [after.id]


def test_burst_is_indexed_once_each_in_batches(rig: Rig) -> None:
    w = rig.start()
    w.batch_paths = 100
    count = 300
    paths = [jpeg(rig.root / f"burst/{i // 100}/img_{i:04d}.jpg", 1000 + i, size=32)
             for i in range(count)]
    wait_for(lambda: rig.ctx.catalog.counts()[PhotoStatus.INDEXED] == count, timeout=45,
             what="burst indexed")
    time.sleep(3 * w.debounce_s)  # any straggling duplicate would arrive by now
    seen = rig.spy.counts()
    assert set(seen) == set(paths)
    assert max(seen.values()) == 1, "a file went to update_paths more than once"
    assert len(rig.spy.calls) >= 3 and all(len(c) <= 100 for _, c in rig.spy.calls)
    ids = rig.faiss_ids()
    assert len(ids) == len(set(ids)) == count
    assert ids == sorted(int(i) for i in rig.ctx.catalog.vector_ids(rig.ctx.models.model_id))
    assert rig.photo_count() == count
    assert rig.errors == []


def test_file_written_slowly_is_indexed_once_complete(rig: Rig) -> None:
    # Pauses longer than the debounce but shorter than settle: only the size check
    # keeps the half-written file from being indexed (and failing as truncated).
    rig.start(debounce_s=0.15, settle_s=0.6)
    src = jpeg(rig.root.parent / "source.jpg", 9, size=256)
    data = src.read_bytes()
    target = rig.root / "slow.jpg"
    pieces = 6
    step = len(data) // pieces + 1
    with open(target, "wb") as f:
        for i in range(pieces):
            f.write(data[i * step:(i + 1) * step])
            f.flush()
            time.sleep(0.35)
    done = time.monotonic()
    wait_for(lambda: rig.indexed(target), what="slow file indexed")
    calls = [t for t, paths in rig.spy.calls if target in paths]
    assert len(calls) == 1 and calls[0] >= done
    assert rig.photo(target).size == len(data)


def test_hidden_and_non_image_files_are_ignored(rig: Rig) -> None:
    rig.start()
    ignored = [
        jpeg(rig.root / ".hidden.jpg", 11),
        jpeg(rig.root / ".cache" / "thumb.jpg", 12),
        jpeg(rig.root / "@eaDir" / "thumb.jpg", 13),
    ]
    (rig.root / "notes.txt").write_text("not a photo")
    (rig.root / "photo.jpg.part").write_bytes(b"partial download")
    good = jpeg(rig.root / "good.jpg", 14)
    wait_for(lambda: rig.indexed(good), what="good.jpg indexed")
    time.sleep(0.5)
    assert set(rig.spy.counts()) == {good}
    assert rig.photo_count() == 1
    assert all(rig.photo(p) is None for p in ignored)


def test_stop_joins_every_thread(rig: Rig) -> None:
    before = set(threading.enumerate())
    w = rig.start()
    photo = jpeg(rig.root / "x.jpg", 15)
    wait_for(lambda: rig.indexed(photo), what="x.jpg indexed")
    assert len(set(threading.enumerate()) - before) >= 2  # observer, emitter, worker...
    w.stop()
    assert not w.is_running
    # The decode processes belong to the indexing service, which keeps them between batches,
    # and the background index saver to the vector store.
    rig.ctx.indexing.close()
    rig.ctx.vectors.close()
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leftover == []
    w.stop()  # stopping twice is harmless


def test_worker_survives_a_failing_batch(rig: Rig) -> None:
    real = rig.ctx.indexing.update_paths
    failures = iter([RuntimeError("disk on fire")])

    def flaky(paths: Iterable[Path], **kwargs: Any) -> IndexReport:
        for exc in failures:
            raise exc
        result: IndexReport = real(paths, **kwargs)
        return result

    rig.ctx.indexing.update_paths = flaky
    rig.start()
    first = jpeg(rig.root / "first.jpg", 16)
    wait_for(lambda: len(rig.errors) == 1, what="the error reported")
    assert "disk on fire" in str(rig.errors[0])
    assert rig.photo(first) is None
    second = jpeg(rig.root / "second.jpg", 17)
    wait_for(lambda: rig.indexed(second), what="later files still indexed")
    assert rig.watcher is not None and rig.watcher.is_running


def test_unwatchable_folder_falls_back_to_rescans(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from watchdog.observers.inotify import InotifyEmitter

    def no_watches(self: Any) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(InotifyEmitter, "on_thread_start", no_watches)
    w = rig.start(rescan_interval_s=0.5)
    assert len(rig.errors) == 1 and isinstance(rig.errors[0], FolderError)
    assert "inotify watch limit reached" in str(rig.errors[0])
    assert w.watched_paths() == [rig.root.resolve()]
    photo = jpeg(rig.root / "polled.jpg", 18)
    wait_for(lambda: rig.indexed(photo), what="found by the periodic re-scan")
    assert rig.spy.calls == []  # no live events: it came from indexing.run


def test_vanished_folder_goes_offline_then_comes_back(rig: Rig, tmp_path: Path) -> None:
    kept = jpeg(rig.root / "kept.jpg", 19)
    rig.ctx.indexing.run()
    w = rig.start()
    w.root_check_s = 0.2
    away = tmp_path / "unplugged"
    rig.root.rename(away)
    folder = lambda: rig.ctx.library.folders()[0]  # noqa: E731
    wait_for(lambda: not folder().online, what="folder marked offline")
    assert rig.photo(kept) is not None and rig.photo_count() == 1  # not emptied
    wait_for(lambda: any(r.offline_folders == (rig.root,) for r in rig.reports),
             what="offline reported")
    away.rename(rig.root)
    wait_for(lambda: folder().online, what="folder back online")
    wait_for(lambda: w.watched_paths() == [rig.root.resolve()], what="watched again")
    late = jpeg(rig.root / "late.jpg", 20)
    wait_for(lambda: rig.indexed(late), what="a file added after the return")
    assert rig.photo(kept) is not None


def test_refresh_follows_library_changes(rig: Rig, tmp_path: Path) -> None:
    w = rig.start()
    other = tmp_path / "other"
    other.mkdir()
    rig.ctx.library.add_folder(other)
    assert other.resolve() not in w.watched_paths()
    w.refresh()
    assert w.watched_paths() == sorted([rig.root.resolve(), other.resolve()])
    photo = jpeg(other / "o.jpg", 21)
    wait_for(lambda: rig.indexed(photo), what="new folder followed")
    rig.ctx.library.set_watched(rig.root, False)
    w.refresh()
    assert w.watched_paths() == [other.resolve()]


def test_restart_after_stop(rig: Rig) -> None:
    w = rig.start()
    w.stop()
    w.start()
    assert w.is_running and w.watched_paths() == [rig.root.resolve()]
    photo = jpeg(rig.root / "after-restart.jpg", 22)
    wait_for(lambda: rig.indexed(photo), what="indexed after a restart")


def test_cli_watch_reconciles_then_follows_until_interrupted(
        tmp_path: Path, models_dir: Path) -> None:
    import json
    import os
    import signal
    import sqlite3
    import subprocess
    import sys

    from tests.tiny_model import TINY_MODEL_ID

    library, photos = tmp_path / "lib", tmp_path / "photos"
    library.mkdir()
    (library / "settings.json").write_text(json.dumps({"decode_workers": 1}))
    jpeg(photos / "offline.jpg", 31)  # added while nothing was running
    from imagesearch.config import Settings
    from imagesearch.services.context import build_context

    ctx = build_context(Settings(library_dir=library, models_dir=models_dir,
                                 model_id=TINY_MODEL_ID))
    ctx.library.add_folder(photos)
    ctx.close()
    env = dict(os.environ, IMAGESEARCH_MODELS=str(models_dir), HF_HUB_OFFLINE="1")
    base = [sys.executable, "-m", "imagesearch.cli.main", "--library", str(library),
            "--model", TINY_MODEL_ID]
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([*base, "watch", "--no-progress"], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def indexed_names() -> set[str]:
        with sqlite3.connect(f"file:{library / 'catalog.sqlite3'}?mode=ro", uri=True) as c:
            rows = c.execute("SELECT path FROM photos WHERE status = 'indexed'").fetchall()
        return {Path(os.fsdecode(bytes(r[0]))).name for r in rows}

    try:
        assert proc.stdout is not None
        line = b""
        while b"watching" not in line:
            line = proc.stdout.readline()
            assert line, "watch exited early"
        assert "offline.jpg" in indexed_names()
        jpeg(photos / "live.jpg", 32)
        wait_for(lambda: "live.jpg" in indexed_names(), what="live.jpg indexed by `watch`")
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, out
    assert "1 added" in out


def test_start_with_reconcile_catches_changes_made_while_stopped(rig: Rig) -> None:
    gone = jpeg(rig.root / "gone.jpg", 40)
    rig.ctx.indexing.run()
    gone.unlink()
    added = jpeg(rig.root / "added.jpg", 41)
    rig.start(reconcile=True)
    wait_for(lambda: rig.indexed(added) and rig.photo(gone) is None, what="reconciled")
    wait_for(lambda: any(r.added == 1 and r.removed == 1 for r in rig.reports),
             what="the reconciliation reported")
    assert added not in rig.spy.counts()  # found by the scan, not by an event


def test_odd_names_are_followed(rig: Rig) -> None:
    import os

    rig.start()
    raw = os.path.join(os.fsencode(rig.root), b"caf\xe9 \xf0\x9f\x8c\x85.jpg")
    jpeg(Path(os.fsdecode(raw)), 42)
    wait_for(lambda: rig.indexed(Path(os.fsdecode(raw))), what="non-UTF-8 name indexed")
    renamed = Path(os.fsdecode(os.path.join(os.fsencode(rig.root), b"na\xefve.jpg")))
    Path(os.fsdecode(raw)).rename(renamed)
    wait_for(lambda: rig.indexed(renamed), what="non-UTF-8 rename followed")
    assert rig.photo_count() == 1


def test_a_late_event_for_an_unchanged_file_is_not_handed_over_again(rig: Rig) -> None:
    import os

    w = rig.start()
    photo = jpeg(rig.root / "late.jpg", 31)
    wait_for(lambda: rig.indexed(photo), what="late.jpg indexed")
    assert w._not_handed_yet([photo]) == []  # a close-write arriving after its batch left
    st = photo.stat()
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a real change
    assert w._not_handed_yet([photo]) == [photo]
    assert w._not_handed_yet([photo]) == []
    # Deleted, then back byte for byte with its old time (a restore): handed over again.
    data, st = photo.read_bytes(), photo.stat()
    photo.unlink()
    wait_for(lambda: rig.photo(photo) is None, what="late.jpg removed")
    photo.write_bytes(data)
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))
    wait_for(lambda: rig.indexed(photo), what="late.jpg indexed again")
