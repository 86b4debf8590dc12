"""Decoding photos in worker processes, a bounded distance ahead of the encoder.

Processes rather than threads: decoding then never contends with the model for the
GIL, and the worker's imports stay light (Pillow and NumPy, no torch).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Generator, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from imagesearch.core.imaging import DecodedImage, PreprocessSpec, decode_for_model
from imagesearch.core.local_features import FeatureMode

_CHUNK = 4  # files per task: amortises the inter-process round trip


@dataclass(frozen=True, slots=True)
class DecodeJob:
    """One file, and which of the two products it needs."""

    path: Path
    pixels: bool = True  # resized for the model (when the pool has a model spec)
    features: bool = True  # local features (when the pool has a feature mode)


def default_workers() -> int:
    """One fewer than the cores (the model takes the rest), at least one, at most four."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _lower_priority() -> None:
    """Decoders yield to the model: a preempted inference thread stalls the whole op."""
    with contextlib.suppress(AttributeError, OSError):
        os.nice(10)


def _decode_chunk(jobs: list[DecodeJob], spec: PreprocessSpec | None,
                  features: FeatureMode | None) -> list[DecodedImage]:
    return [_decode(job, spec, features) for job in jobs]


def _decode(job: DecodeJob, spec: PreprocessSpec | None, features: FeatureMode | None
            ) -> DecodedImage:
    return decode_for_model(job.path, spec if job.pixels else None,
                            features if job.features else None)


class DecodePool:
    """A pool of decode processes. ``workers=0`` decodes in the calling thread.

    ``spec`` None: no model input is made (no model weights); ``features`` None: no local
    features are found.
    """

    def __init__(self, spec: PreprocessSpec | None, workers: int | None = None,
                 lookahead: int = 64, features: FeatureMode | None = None) -> None:
        self.spec = spec
        self.features = features
        self.workers = default_workers() if workers is None else workers
        self.lookahead = max(lookahead, _CHUNK)
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            return self._pool_locked()

    def _pool_locked(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn: forking a process that holds torch's threads is unsafe.
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_lower_priority)
        return self._executor

    def decode(self, jobs: Iterable[Path | DecodeJob], lookahead: int | None = None
               ) -> Generator[DecodedImage, None, None]:
        """Decoded images in the order of ``jobs``; at most ``lookahead`` in flight.

        Safe to call from several threads at once: each call keeps its own window.
        """
        work = (j if isinstance(j, DecodeJob) else DecodeJob(j) for j in jobs)
        if self.workers <= 0:
            for job in work:
                yield _decode(job, self.spec, self.features)
            return
        pending: deque[tuple[Future[list[DecodedImage]], list[DecodeJob]]] = deque()
        chunk: list[DecodeJob] = []
        max_tasks = max(1, max(lookahead or self.lookahead, _CHUNK) // _CHUNK)
        try:
            for p in work:
                chunk.append(p)
                if len(chunk) == _CHUNK:
                    pending.append((self._submit(chunk), chunk))
                    chunk = []
                    while len(pending) >= max_tasks:
                        yield from self._result(*pending.popleft())
            if chunk:
                pending.append((self._submit(chunk), chunk))
            while pending:
                yield from self._result(*pending.popleft())
        finally:
            for f, _ in pending:
                f.cancel()

    def _submit(self, chunk: list[DecodeJob]) -> Future[list[DecodedImage]]:
        try:
            return self._pool().submit(_decode_chunk, chunk, self.spec, self.features)
        except BrokenProcessPool:
            self._restart()
            return self._pool().submit(_decode_chunk, chunk, self.spec, self.features)

    def _result(self, future: Future[list[DecodedImage]], chunk: list[DecodeJob]
                ) -> list[DecodedImage]:
        try:
            return future.result()
        except BrokenProcessPool:
            # A worker died (a decoder crashed or was killed): find the culprit file by
            # file, so the rest of the chunk still gets indexed.
            self._restart()
            out = []
            for job in chunk:
                try:
                    out.append(self._pool().submit(_decode_chunk, [job], self.spec,
                                                   self.features).result()[0])
                except BrokenProcessPool:
                    self._restart()
                    out.append(DecodedImage(job.path,
                                            error="the image decoder crashed on this file"))
            return out

    def _restart(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
