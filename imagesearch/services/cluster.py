"""Indexing on a Ray cluster: its workers decode, embed and find local features; the
results stream back to this process, whose one writer stores them in the catalog.

The catalog stays the truth and this process its only writer: a worker never touches
the library's files or index. Batches are committed as they come back, so a run killed
at any moment resumes with the next scan, which finds the committed photos unchanged
and plans the rest (an upsert by path never stores a photo twice).

The workers read the photos and the model weights at the paths this process uses: on a
cluster of several machines the library folders and the models folder must be mounted
alike on every node (a NAS, as an archive that outgrows one machine usually lives on).
Ray itself is an optional dependency: ``pip install "imagesearch[cluster]"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from imagesearch.config import Settings
from imagesearch.core.decode_pool import DecodeJob
from imagesearch.core.imaging import DecodedImage, decode_for_model
from imagesearch.core.local_features import FEATURE_MODES
from imagesearch.errors import ImageSearchError

log = logging.getLogger(__name__)

IN_FLIGHT_PER_WORKER = 2  # batches queued on each worker: one running, one waiting


class ClusterError(ImageSearchError):
    """The cluster cannot be used (Ray missing, no cluster at the address, no workers)."""


def _unreachable(address: str, timeout_s: float = 30.0) -> str | None:
    """Why no Ray cluster answers at ``address``, or None.

    Ray itself, pointed at a port where nothing or something else listens, retries for
    many minutes; here a closed port is refused at once and anything else must answer
    `ray status` within ``timeout_s``.
    """
    if address == "auto" or address.startswith(("ray://", "local")):
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return "expected host:port (as `ray start --head` prints it), or auto"
    try:
        with socket.create_connection((host, int(port)), timeout=min(timeout_s, 5.0)):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        done = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "status",
                               "--address", address], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return (f"no answer from a Ray cluster within {timeout_s:.0f} s (does something "
                "else listen on that port?)")
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return lines[-1] if lines else f"`ray status` failed ({done.returncode})"
    return None


class EmbedWorker:
    """Runs on a cluster worker (as a Ray actor): the model loaded once, then batches."""

    def __init__(self, settings: dict[str, Any], cpus: int = 1) -> None:
        # Inference threads to match the CPUs this worker holds, so the workers on one
        # node share its cores instead of each taking all of them.
        os.environ["OMP_NUM_THREADS"] = str(cpus)
        import cv2
        import torch

        torch.set_num_threads(cpus)
        cv2.setNumThreads(cpus)  # SIFT's own pool ignores OMP_NUM_THREADS
        from imagesearch.services.models import ModelManager

        config = Settings(**{**settings, "library_dir": Path(settings["library_dir"]),
                             "models_dir": Path(settings["models_dir"])})
        self.features = FEATURE_MODES.get(config.local_features)
        self.models = ModelManager(config)
        self.encoder: Any = None

    def process(self, jobs: list[tuple[str, bool, bool]]
                ) -> tuple[list[DecodedImage], list[np.ndarray | None]]:
        """Decode, embed and describe one batch; the pixels stay here."""
        spec = None
        if any(pixels for _, pixels, _ in jobs):
            if self.encoder is None:
                self.encoder = self.models.encoder()
            spec = self.encoder.spec
        decoded = [decode_for_model(Path(path), spec if pixels else None,
                                    self.features if features else None)
                   for path, pixels, features in jobs]
        with_pixels = [i for i, d in enumerate(decoded) if d.pixels is not None]
        vectors: list[np.ndarray | None] = [None] * len(decoded)
        if with_pixels:
            pixels = [decoded[i].pixels for i in with_pixels]
            encoded = self.encoder.encode_images(np.stack([p for p in pixels if p is not None]))
            for i, vector in zip(with_pixels, encoded, strict=True):
                vectors[i] = np.asarray(vector, dtype=np.float32)
        return [dataclasses.replace(d, pixels=None) for d in decoded], vectors


class ClusterSource:
    """Photos embedded by a Ray cluster's workers (a ``BatchSource`` for indexing).

    Args:
        address: the cluster's address (``ray start --head`` prints it), e.g.
            ``192.168.1.20:6379``; "auto" finds a cluster started on this machine.
        workers: how many workers to start; default one per CPU the cluster offers.

    Raises:
        ClusterError: Ray is missing, or no cluster answers at ``address``.
    """

    def __init__(self, settings: Settings, address: str, workers: int | None = None,
                 probe_timeout_s: float = 30.0) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ClusterError("indexing on a cluster needs Ray: pip install "
                               "\"imagesearch[cluster]\" (or pip install ray)") from exc
        self._ray: Any = ray
        problem = _unreachable(address, probe_timeout_s)
        if problem is not None:
            raise ClusterError(f"no Ray cluster at {address}: {problem}")
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                     ignore_reinit_error=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"no Ray cluster at {address}: {exc}") from exc
        # Workers beyond the free CPUs would never start, and their batches never end.
        cpus = int(self._ray.available_resources().get("CPU", 0))
        count = min(workers, cpus) if workers else cpus
        if count < 1:
            ray.shutdown()
            raise ClusterError(f"the Ray cluster at {address} offers no CPU to work on")
        config = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
        config["library_dir"] = str(settings.library_dir)
        config["models_dir"] = str(settings.models_dir)
        actor: Any = ray.remote(num_cpus=1)(EmbedWorker)
        self.workers: list[Any] = [actor.remote(config) for _ in range(count)]
        self.address = address
        log.info("indexing on the Ray cluster at %s with %d workers", address, count)

    def batches(self, todo: list[DecodeJob], size: int, cancel: threading.Event
                ) -> Generator[tuple[list[DecodedImage], dict[Path, np.ndarray]], None, None]:
        """Batches as the workers finish them (not in order); each photo comes back once.

        Raises:
            ClusterError: a worker failed (its node was lost, the model could not load).
        """
        ray = self._ray
        pending = [todo[i:i + size] for i in range(0, len(todo), size)]
        pending.reverse()  # popped from the end: the first batches go first
        running: dict[Any, Any] = {}  # task -> worker
        idle = [w for w in self.workers for _ in range(IN_FLIGHT_PER_WORKER)]
        try:
            while pending or running:
                while pending and idle and not cancel.is_set():
                    worker = idle.pop(0)
                    jobs = [(str(j.path), j.pixels, j.features) for j in pending.pop()]
                    running[worker.process.remote(jobs)] = worker
                if not running:
                    return  # cancelled: nothing more is sent, nothing is left running
                done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                if not done:
                    if cancel.is_set():
                        return  # what is still running is cancelled below
                    continue
                task = done[0]
                idle.append(running.pop(task))
                try:
                    decoded, vectors = ray.get(task)
                except ray.exceptions.RayError as exc:
                    cause = getattr(exc, "cause", None)  # the worker's own exception
                    text = str(cause) if cause is not None else str(exc)
                    first = (text.strip().splitlines() or [type(exc).__name__])[0]
                    raise ClusterError(f"a cluster worker failed: {first}") from exc
                yield decoded, {d.path: v for d, v in zip(decoded, vectors, strict=True)
                                if v is not None}
        finally:
            for task in running:  # a cancelled or failed run: stop what is still queued
                with contextlib.suppress(ValueError, TypeError, ray.exceptions.RayError):
                    ray.cancel(task)

    def close(self) -> None:
        """Stop the workers and disconnect (quietly, if the cluster is gone already)."""
        for worker in self.workers:
            with contextlib.suppress(Exception):
                self._ray.kill(worker)
        self.workers = []
        self._ray.shutdown()
