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

Nodes with GPUs get a GPU worker per GPU (unless the device is set to cpu), holding a few
of the node's CPUs to decode and find local features for it: a GPU embeds far faster
than one CPU decodes. The other CPUs get a worker each.
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
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagesearch.config import Settings
from imagesearch.core.decode_pool import DecodeJob
from imagesearch.core.imaging import DecodedImage, decode_for_model
from imagesearch.errors import ImageSearchError
from imagesearch.services.local_search import feature_mode

log = logging.getLogger(__name__)

IN_FLIGHT_PER_WORKER = 2  # batches queued on each worker: one running, one waiting
# CPUs a GPU worker holds (fewer where its node has fewer a GPU): they decode and find
# local features for the GPU, which embeds a batch in a fraction of that time.
GPU_WORKER_CPUS = 4
GPU_START_S = 180.0  # for a GPU worker to start (import torch, see its device)


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


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """How many workers of each kind a run starts."""

    gpu_nodes: tuple[tuple[str, int, int], ...]  # (node id, GPU workers, CPUs each)
    cpu_workers: int

    @property
    def gpu_workers(self) -> int:
        return sum(count for _, count, _ in self.gpu_nodes)

    @property
    def total(self) -> int:
        return self.gpu_workers + self.cpu_workers

    def describe(self) -> str:
        parts = []
        if self.gpu_workers:
            each = sorted({cpus for _, count, cpus in self.gpu_nodes if count})
            cpus = (f"{each[0]}" if len(each) == 1 else f"{each[0]}-{each[-1]}")
            parts.append(f"{self.gpu_workers} GPU worker{'s' * (self.gpu_workers > 1)} "
                         f"({cpus} CPU{'s' * (each[-1] > 1)} each)")
        if self.cpu_workers:
            parts.append(f"{self.cpu_workers} CPU worker{'s' * (self.cpu_workers > 1)}")
        return " and ".join(parts) or "no workers"


def plan_workers(nodes: Sequence[dict[str, Any]], free_cpus: int, use_gpus: bool,
                 limit: int | None = None) -> WorkerPlan:
    """Workers for a cluster's ``nodes`` (as ``ray.nodes()`` lists them): on each live
    node with GPUs, one per GPU, each holding up to GPU_WORKER_CPUS of that node's CPUs
    (as many as it has a GPU; a GPU with no CPU to drive it gets no worker); then one
    per CPU left. At most ``limit`` in all, GPUs first."""
    gpu_nodes: list[tuple[str, int, int]] = []
    left = limit if limit is not None else free_cpus + sum(
        int(node.get("Resources", {}).get("GPU", 0)) for node in nodes)
    held = 0
    for node in nodes if use_gpus else ():
        resources = node.get("Resources", {})
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        if not node.get("Alive", True) or gpus < 1 or cpus < 1:
            continue
        each = max(1, min(GPU_WORKER_CPUS, cpus // gpus))
        count = min(gpus, cpus // each, left, (free_cpus - held) // each)
        if count > 0:
            gpu_nodes.append((str(node.get("NodeID", "")), count, each))
            held += count * each
            left -= count
    return WorkerPlan(tuple(gpu_nodes), max(0, min(free_cpus - held, left)))


class EmbedWorker:
    """Runs on a cluster worker (as a Ray actor): the model loaded once, then batches."""

    def __init__(self, settings: dict[str, Any], cpus: int = 1, gpu: bool = False) -> None:
        """Args:
            cpus: the CPUs Ray gave this worker; a GPU worker decodes on that many
                threads, a CPU worker runs inference on them.
            gpu: Ray gave this worker a GPU (it sees only that one).
        """
        # Inference threads to match the CPUs this worker holds, so the workers on one
        # node share its cores instead of each taking all of them.
        os.environ["OMP_NUM_THREADS"] = str(cpus)
        import cv2
        import torch

        torch.set_num_threads(cpus)
        self.decoders = cpus if gpu else 1
        # SIFT's own pool ignores OMP_NUM_THREADS; a GPU worker's decode threads each
        # run one SIFT.
        cv2.setNumThreads(1 if gpu else cpus)
        self.device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
        from imagesearch.services.models import ModelManager

        config = Settings(**{**settings, "library_dir": Path(settings["library_dir"]),
                             "models_dir": Path(settings["models_dir"]),
                             "device": self.device})
        self.features = feature_mode(config)
        self.models = ModelManager(config)
        self.encoder: Any = None

    def describe(self) -> str:
        """Where this worker embeds: "cuda" or "cpu"."""
        return self.device

    def process(self, jobs: list[tuple[str, bool, bool]]
                ) -> tuple[list[DecodedImage], list[np.ndarray | None]]:
        """Decode, embed and describe one batch; the pixels stay here."""
        spec = None
        if any(pixels for _, pixels, _ in jobs):
            if self.encoder is None:
                self.encoder = self.models.encoder()
            spec = self.encoder.spec

        def decode(job: tuple[str, bool, bool]) -> DecodedImage:
            path, pixels, features = job
            return decode_for_model(Path(path), spec if pixels else None,
                                    self.features if features else None)

        if self.decoders > 1:  # PIL and OpenCV release the GIL while they work
            with ThreadPoolExecutor(self.decoders) as pool:
                decoded = list(pool.map(decode, jobs))
        else:
            decoded = [decode(job) for job in jobs]
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
        self.plan = plan_workers(self._ray.nodes(), cpus, settings.device in ("auto", "cuda"),
                                 workers)
        if self.plan.total < 1:
            ray.shutdown()
            raise ClusterError(f"the Ray cluster at {address} offers no CPU to work on")
        config = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
        config["library_dir"] = str(settings.library_dir)
        config["models_dir"] = str(settings.models_dir)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        worker: Any = ray.remote(EmbedWorker)
        self.workers: list[Any] = [
            worker.options(num_cpus=each, num_gpus=1,
                           scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                           ).remote(config, each, True)
            for node, count, each in self.plan.gpu_nodes for _ in range(count)]
        self.address = address
        self.gpus_unusable = 0
        if self.plan.gpu_workers:
            try:
                # A GPU node whose CPUs are taken by other jobs never starts its
                # worker: said here rather than waited for.
                devices = ray.get([w.describe.remote()
                                   for w in self.workers[:self.plan.gpu_workers]],
                                  timeout=GPU_START_S)
            except ray.exceptions.RayError as exc:
                self.close()
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ClusterError(f"a GPU worker did not start within {GPU_START_S:.0f} s:"
                                   f" {first}") from exc
            self.gpus_unusable = sum(device != "cuda" for device in devices)
            if self.gpus_unusable:
                log.warning("%d GPU worker(s) cannot use the GPU Ray gave them (torch "
                            "sees no CUDA device there); they embed on their CPUs",
                            self.gpus_unusable)
        # Only now: started first, CPU workers could take the CPUs a GPU worker needs.
        self.workers += [worker.options(num_cpus=1).remote(config)
                         for _ in range(self.plan.cpu_workers)]
        log.info("indexing on the Ray cluster at %s with %s", address, self.plan.describe())

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
