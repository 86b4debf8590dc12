"""A stalled read (a network share gone quiet) costs one file a time limit, never a hang:
not in indexing, not on quitting."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagesearch.core.decode_pool import DecodePool
from imagesearch.core.imaging import PreprocessSpec
from tests.conftest import noise_jpeg

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(os.name != "posix", reason="a FIFO stands in for a stall")]

SPEC = PreprocessSpec(size=32)


def stalled(path: Path) -> Path:
    """A path whose open() blocks forever: a FIFO nobody writes to, like a dead share."""
    os.mkfifo(path)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    return [noise_jpeg(tmp_path / f"p{i}.jpg", i, 32) for i in range(5)]


@pytest.fixture
def pool() -> Iterator[DecodePool]:
    pool = DecodePool(SPEC, workers=1, timeout_s=1.0)
    yield pool
    pool.close()


def test_a_stalled_file_times_out_and_the_rest_go_on(pool: DecodePool, photos: list[Path],
                                                     tmp_path: Path) -> None:
    stuck = stalled(tmp_path / "on-the-nas.jpg")
    order = [photos[0], stuck, *photos[1:]]
    results = list(pool.decode(order))
    assert [r.path for r in results] == order
    assert results[1].pixels is None
    assert results[1].error is not None and "timed out reading" in results[1].error
    assert all(r.error is None and r.pixels is not None for r in results[:1] + results[2:])
    # The killed worker was replaced: the pool goes on working.
    assert [r.error for r in pool.decode(photos[:2])] == [None, None]


def test_a_worker_that_dies_fails_only_its_file(photos: list[Path], tmp_path: Path) -> None:
    pool = DecodePool(SPEC, workers=1, timeout_s=60.0)
    stuck = stalled(tmp_path / "victim.jpg")

    def kill_the_worker_once_it_is_stuck() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            busy = [w for w in pool._pool if w.task is not None]
            if busy and len(busy[0].task.results) == 1:  # done with photos[0], on the FIFO
                time.sleep(0.2)
                os.kill(busy[0].process.pid, 9)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_worker_once_it_is_stuck)
    killer.start()
    try:
        results = list(pool.decode([photos[0], stuck, photos[1]]))
    finally:
        killer.join()
        pool.close()
    assert [r.error for r in results][::2] == [None, None]
    assert results[1].error == "the image decoder crashed on this file"


def test_cancelling_and_closing_do_not_wait_for_a_stalled_file(
        photos: list[Path], tmp_path: Path) -> None:
    pool = DecodePool(SPEC, workers=1, timeout_s=3600.0)
    stuck = stalled(tmp_path / "on-the-nas.jpg")
    cancel = threading.Event()
    timer = threading.Timer(1.0, cancel.set)
    timer.start()
    started = time.monotonic()
    results = list(pool.decode([photos[0], stuck, photos[1]], cancel=cancel))
    assert time.monotonic() - started < 20  # not the hour of the time limit
    assert [r.path for r in results] == [photos[0]]  # nothing invented for the rest
    started = time.monotonic()
    pool.close()  # its worker is still blocked opening the FIFO: it is killed
    assert time.monotonic() - started < 10
    assert pool._pool == []


def test_stopping_the_watcher_does_not_hang_on_a_stuck_scan(
        context: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagesearch.services.watching import FolderWatcher

    root = tmp_path / "photos"
    root.mkdir()
    context.library.add_folder(root)
    scanning, release = threading.Event(), threading.Event()

    def stuck_scan(*args: Any, **kwargs: Any) -> Any:
        scanning.set()
        release.wait(60)  # a listing of a dead share, which no cancel can interrupt
        raise OSError("the share went away")

    monkeypatch.setattr(context.indexing, "run", stuck_scan)
    watcher = FolderWatcher(context.indexing, context.library, on_error=lambda e: None)
    watcher.start(reconcile=True)
    try:
        assert scanning.wait(20)
        started = time.monotonic()
        assert watcher.stop(timeout_s=0.5) is False  # says a thread is still busy...
        assert time.monotonic() - started < 5  # ...without waiting for it
    finally:
        release.set()
    deadline = time.monotonic() + 20
    while any(t.name == "imagesearch-watcher" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the watcher thread never ended"
        time.sleep(0.05)


def test_quitting_the_window_does_not_hang_on_stuck_work(qtbot: Any) -> None:
    from imagesearch.gui.workers import TaskRunner

    runner = TaskRunner()
    release = threading.Event()
    runner.submit("io", lambda: release.wait(60))
    qtbot.waitUntil(runner.busy, timeout=10_000)
    try:
        started = time.monotonic()
        assert runner.shutdown(timeout_ms=300) == ["io"]
        assert time.monotonic() - started < 5
    finally:
        release.set()
        assert runner.wait_idle(20_000)


@pytest.mark.parametrize(("cores", "plain", "with_features"),
                         [(1, 1, 1), (2, 1, 2), (4, 3, 4), (16, 4, 4)])
def test_decode_processes_follow_the_cores_and_the_work(
        monkeypatch: pytest.MonkeyPatch, cores: int, plain: int, with_features: int) -> None:
    """Photo details make decoding heavy enough for one process per core."""
    from imagesearch.core import decode_pool
    from imagesearch.core.local_features import FEATURE_MODES

    monkeypatch.setattr(decode_pool, "usable_cores", lambda: cores)
    assert decode_pool.default_workers() == plain
    assert decode_pool.default_workers(features=True) == with_features
    compact = FEATURE_MODES["compact"]
    for pool, expected in ((DecodePool(SPEC), plain),
                           (DecodePool(SPEC, features=compact), with_features),
                           (DecodePool(SPEC, workers=1, features=compact), 1)):
        with pool:
            assert pool.workers == expected


def test_usable_cores_follow_the_affinity_then_the_count(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    from imagesearch.core.cpu import usable_cores

    monkeypatch.setattr(os, "process_cpu_count", lambda: 5, raising=False)  # Python 3.13+
    assert usable_cores() == 5
    monkeypatch.delattr(os, "process_cpu_count")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert usable_cores() == 3  # a container or taskset allowing 3 of the machine's cores

    def no_affinity(pid: int) -> set[int]:
        raise AttributeError("no affinity call on this system")

    def refused(pid: int) -> set[int]:
        raise OSError("not permitted")

    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    for broken in (no_affinity, refused):
        monkeypatch.setattr(os, "sched_getaffinity", broken, raising=False)
        assert usable_cores() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: assume a small machine
    assert usable_cores() == 2
