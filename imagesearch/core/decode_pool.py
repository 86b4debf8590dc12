"""Decoding photos in worker processes, a bounded distance ahead of the encoder.

Processes rather than threads: decoding then never contends with the model for the
GIL, and the worker's imports stay light (Pillow and NumPy, no torch). Each file has a
time limit: a worker stuck on it (a stalled network share, a decoder gone astray) is
killed and replaced, the file fails with "timed out reading", and the rest go on.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path

from imagesearch.core.cpu import usable_cores
from imagesearch.core.imaging import DecodedImage, PreprocessSpec, decode_for_model
from imagesearch.core.local_features import FeatureMode

log = logging.getLogger(__name__)

_CHUNK = 4  # files per task: amortises the inter-process round trip
FILE_TIMEOUT_S = 60.0  # one file's decode, from the worker taking it up to its answer
STOP_WAIT_S = 2.0  # on close, how long a worker may take to leave before it is killed
START_TIMEOUT_S = 120.0  # a new worker not ready by then is killed (and counted as failed)
_READY = "ready"
_MAX_FAILED_STARTS = 3  # workers in a row that die before they are ready: give up


def default_workers(features: bool = False) -> int:
    """Decode processes for this machine, at least one and at most four.

    Without local features, one fewer than the cores: the model takes the rest. With them,
    a decode (SIFT and its codes, ~20 ms of a core for a small photo) weighs half what the
    model's forward does, so one process per core: decoders run at a lower priority, and the
    extra one only fills the cores the model leaves idle. On a 2-core EPYC, 2 processes
    instead of 1 indexed 28.4 photos/s instead of 21.9 with compact details and 41.0
    against 40.1 without (``python bench/index_throughput.py --features compact
    --workers N``, medians of 3).
    """
    cores = usable_cores()
    return max(1, min(4, cores if features else cores - 1))


def _lower_priority() -> None:
    """Decoders yield to the model: a preempted inference thread stalls the whole op."""
    with contextlib.suppress(AttributeError, OSError):
        os.nice(10)


@dataclass(frozen=True, slots=True)
class DecodeJob:
    """One file, and which of the two products it needs."""

    path: Path
    pixels: bool = True  # resized for the model (when the pool has a model spec)
    features: bool = True  # local features (when the pool has a feature mode)


def _decode(job: DecodeJob, spec: PreprocessSpec | None, features: FeatureMode | None
            ) -> DecodedImage:
    return decode_for_model(job.path, spec if job.pixels else None,
                            features if job.features else None)


def _worker_main(conn: Connection, spec: PreprocessSpec | None,
                 features: FeatureMode | None) -> None:
    """A decode process: take a list of jobs, send back one result per job."""
    _lower_priority()
    # One thread per decode process: there is a process per spare core already, and
    # OpenCV's own pool (a thread per core) doubled SIFT's CPU time per photo (measured
    # 93-107 ms against 49-54 ms on a 2-core EPYC) while slowing the model's threads.
    os.environ.setdefault("OPENCV_FOR_THREADS_NUM", "1")
    # Likewise FAISS's OpenMP team, which encodes the stored descriptors (read when FAISS
    # is first imported here, which is later).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle
    conn.send(_READY)
    while True:
        try:
            jobs = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if jobs is None:
            return
        for job in jobs:
            conn.send(_decode(job, spec, features))


@dataclass(eq=False)
class _Task:
    """A chunk of jobs; results fill in one by one as the worker sends them."""

    jobs: list[DecodeJob]
    results: list[DecodedImage] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    ended: bool = False  # complete, or given up because the pool closed
    discarded: bool = False  # its caller stopped waiting for it

    def add(self, result: DecodedImage) -> None:
        with self.changed:
            self.results.append(result)
            self.ended = self.ended or self.complete
            self.changed.notify_all()

    def fail_current(self, reason: str) -> None:
        self.add(DecodedImage(self.jobs[len(self.results)].path, error=reason))

    def end(self) -> None:
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    @property
    def complete(self) -> bool:
        return len(self.results) == len(self.jobs)


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    ready: bool = False
    task: _Task | None = None
    deadline: float = 0.0  # when the file it is on (or its start) times out


class DecodePool:
    """A pool of decode processes. ``workers=0`` decodes in the calling thread.

    One dispatcher thread hands chunks to idle workers, collects their answers, and kills
    and replaces a worker that is past a file's deadline or has died. ``spec`` None: no
    model input is made (no model weights); ``features`` None: no local features.
    """

    def __init__(self, spec: PreprocessSpec | None, workers: int | None = None,
                 lookahead: int = 64, timeout_s: float = FILE_TIMEOUT_S,
                 features: FeatureMode | None = None) -> None:
        self.spec = spec
        self.features = features
        self.workers = default_workers(features is not None) if workers is None else workers
        self.lookahead = max(lookahead, _CHUNK)
        self.timeout_s = timeout_s
        self._mp = multiprocessing.get_context("spawn")  # forking torch's threads is unsafe
        self._lock = threading.Lock()
        self._queue: deque[_Task] = deque()
        self._pool: list[_Worker] = []
        self._wake_r, self._wake_w = self._mp.Pipe(duplex=False)
        self._dispatcher: threading.Thread | None = None
        self._closed = False
        self._failed_starts = 0
        self._names = itertools.count(1)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The callers' side ---------------------------------------------------------------------

    def decode(self, jobs: Iterable[Path | DecodeJob], lookahead: int | None = None,
               cancel: threading.Event | None = None) -> Generator[DecodedImage, None, None]:
        """Decoded images in the order of ``jobs``; at most ``lookahead`` in flight.

        Safe to call from several threads at once: each call keeps its own window. Ends
        early, without a result for the files not reached, once ``cancel`` is set or the
        pool is closed; the files simply stay to be indexed by a later run.
        """
        work = (j if isinstance(j, DecodeJob) else DecodeJob(j) for j in jobs)
        if self.workers <= 0:
            for job in work:
                if cancel is not None and cancel.is_set():
                    return
                yield _decode(job, self.spec, self.features)
            return
        pending: deque[_Task] = deque()
        chunk: list[DecodeJob] = []
        max_tasks = max(1, max(lookahead or self.lookahead, _CHUNK) // _CHUNK)
        try:
            for p in work:
                chunk.append(p)
                if len(chunk) == _CHUNK:
                    pending.append(self._submit(chunk))
                    chunk = []
                    while len(pending) >= max_tasks:
                        if not (yield from self._drain(pending[0], cancel)):
                            return
                        pending.popleft()
            if chunk:
                pending.append(self._submit(chunk))
            while pending:
                if not (yield from self._drain(pending[0], cancel)):
                    return
                pending.popleft()
        finally:
            for task in pending:
                self._discard(task)

    def _drain(self, task: _Task, cancel: threading.Event | None
               ) -> Generator[DecodedImage, None, bool]:
        """Yield a task's results as they come; False if cancelled or the pool closed."""
        given = 0
        while True:
            with task.changed:
                if len(task.results) == given and not task.ended:
                    task.changed.wait(0.1)
                fresh = task.results[given:]
                ended = task.ended
            yield from fresh
            given += len(fresh)
            if task.complete:
                return True
            if ended or (cancel is not None and cancel.is_set()):
                return False

    def _submit(self, jobs: list[DecodeJob]) -> _Task:
        task = _Task(list(jobs))
        with self._lock:
            if self._closed:
                task.end()
                return task
            self._queue.append(task)
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(target=self._dispatch, daemon=True,
                                                    name="imagesearch-decode-dispatch")
                self._dispatcher.start()
        self._wake()
        return task

    def _discard(self, task: _Task) -> None:
        with self._lock:
            task.discarded = True
            if task in self._queue:
                self._queue.remove(task)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"!")

    def close(self) -> None:
        """Stop the workers: ask, then kill those still busy after STOP_WAIT_S.

        Never waits longer than that: a worker stuck in a read on a dead share is killed.
        Callers still waiting get no more results.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            dispatcher = self._dispatcher
        self._wake()
        if dispatcher is not None:
            dispatcher.join()
        self._wake_r.close()
        self._wake_w.close()

    # The dispatcher thread -----------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closed:
                        break
                    self._assign()
                    busy = [w for w in self._pool if not w.ready or w.task is not None]
                    deadlines = [w.deadline for w in busy]
                timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                ready = wait([self._wake_r] + [w.conn for w in busy], timeout)
                with self._lock:
                    if self._wake_r in ready:
                        with contextlib.suppress(EOFError, OSError):
                            while self._wake_r.poll():
                                self._wake_r.recv_bytes()
                    for worker in busy:
                        if worker.conn in ready:
                            self._receive(worker)
                    self._expire(time.monotonic())
        finally:
            self._shutdown()

    def _assign(self) -> None:
        """Hand queued chunks to idle workers; start workers for the rest, up to the size."""
        for worker in self._pool:
            if not self._queue:
                return
            if worker.ready and worker.task is None:
                task = self._queue.popleft()
                worker.task = task
                worker.deadline = time.monotonic() + self.timeout_s
                try:
                    worker.conn.send(task.jobs[len(task.results):])
                except OSError:
                    self._worker_lost(worker, "the image decoder crashed on this file")
                    return  # the pool changed under the loop; the next round goes on
        starting = sum(not w.ready for w in self._pool)
        while self._queue and len(self._pool) < self.workers and starting < len(self._queue):
            if self._failed_starts >= _MAX_FAILED_STARTS:
                self._fail_queue("the image decoder could not be started")
                return
            self._start_worker()  # usable once it says it is ready
            starting += 1

    def _start_worker(self) -> None:
        parent, child = self._mp.Pipe()
        process = self._mp.Process(target=_worker_main,
                                   args=(child, self.spec, self.features), daemon=True,
                                   name=f"imagesearch-decode-{next(self._names)}")
        process.start()
        child.close()
        self._pool.append(_Worker(process, parent,
                                  deadline=time.monotonic() + START_TIMEOUT_S))

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            if not worker.ready:
                self._failed_starts += 1
            self._worker_lost(worker, "the image decoder crashed on this file")
            return
        if message == _READY:
            worker.ready = True
            self._failed_starts = 0
            return
        task = worker.task
        if task is None or not isinstance(message, DecodedImage):
            return
        task.add(message)
        worker.deadline = time.monotonic() + self.timeout_s  # the next file starts now
        if task.complete:
            worker.task = None

    def _expire(self, now: float) -> None:
        for worker in list(self._pool):
            if not worker.ready and now >= worker.deadline:
                log.warning("a decode worker did not start within %g s", START_TIMEOUT_S)
                self._failed_starts += 1
                self._worker_lost(worker, "the image decoder could not be started")
            elif worker.task is not None and now >= worker.deadline:
                path = worker.task.jobs[len(worker.task.results)].path
                log.warning("no answer on %s after %g s: restarting its decoder", path,
                            self.timeout_s)
                self._worker_lost(worker, f"timed out reading the file (no result after "
                                          f"{self.timeout_s:g} s)")

    def _worker_lost(self, worker: _Worker, reason: str) -> None:
        """Kill and forget a worker; its current file fails, the rest of its chunk waits."""
        self._pool.remove(worker)
        _kill(worker)
        task = worker.task
        if task is None:
            return
        task.fail_current(reason)
        if not task.complete and not task.discarded:
            self._queue.appendleft(task)  # the files after the culprit, on another worker

    def _fail_queue(self, reason: str) -> None:
        while self._queue:
            task = self._queue.popleft()
            while not task.complete:
                task.fail_current(reason)

    def _shutdown(self) -> None:
        with self._lock:
            workers, self._pool = self._pool, []
            queued, self._queue = list(self._queue), deque()
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        deadline = time.monotonic() + STOP_WAIT_S
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            _kill(worker)
        for task in queued + [w.task for w in workers if w.task is not None]:
            task.end()  # incomplete: its caller stops without the missing results


def _kill(worker: _Worker) -> None:
    """End a worker process now (a kill works even on one blocked in a file read)."""
    if worker.process.is_alive():
        worker.process.kill()
    worker.process.join(STOP_WAIT_S)
    worker.conn.close()
