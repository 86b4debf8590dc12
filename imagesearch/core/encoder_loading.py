"""Loading the encoder a model runs best as on this machine.

On a GPU, or when a torch precision is asked for, it is the torch ClipEncoder. On the
CPU with precision "auto" (or "onnx-int8" / "onnx-fp32"), the runtime probe's cached
choice decides each tower; the first load of a model's weights on a machine runs the
probe in a child process and records its figures. Later loads read one JSON file and,
when ONNX Runtime was chosen, import neither torch nor open_clip.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from imagesearch.core.encoder import ClipEncoder, Encoder
from imagesearch.core.local_index_file import NO_LOCK_ERRNOS
from imagesearch.core.onnx_encoder import RuntimeEncoder
from imagesearch.core.onnx_export import RuntimeManifest, tower_file
from imagesearch.core.runtime_probe import (
    RUNTIME_DIR,
    RuntimeChoice,
    cached_choice,
    choice_key,
    store_choice,
)
from imagesearch.core.weights import DownloadProgress, InstalledWeights, WeightStore
from imagesearch.errors import ModelLoadError, ModelUnavailable

log = logging.getLogger(__name__)

TORCH_PRECISIONS = ("fp32", "bf16", "fp16")
ONNX_PRECISIONS = ("onnx-int8", "onnx-fp32")
PRECISIONS = ("auto", *TORCH_PRECISIONS, *ONNX_PRECISIONS)
_PROBE_TIMEOUT_S = 1800.0
_probe_lock = threading.Lock()  # one probe per process at a time
PROBE_LOCK_FILE = "runtime-probe.lock"  # and one per models folder across processes


def likely_device(requested: str) -> str:
    """The device "auto" resolves to, asking torch only where a GPU may be present.

    Importing torch costs seconds on a small CPU; without an NVIDIA driver or Apple
    silicon there is nothing for it to find.
    """
    if requested not in ("auto", ""):
        return requested
    gpu_signs = (sys.platform == "darwin" and os.uname().machine == "arm64") or any(
        os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia/version")) or (
        sys.platform == "win32" and shutil.which("nvidia-smi") is not None)
    if not gpu_signs:
        return "cpu"
    from imagesearch.core.encoder import resolve_device

    return resolve_device("auto")


def load_encoder(model_id: str, store: WeightStore, device: str = "auto",
                 precision: str = "auto", allow_download: bool = True,
                 progress: DownloadProgress | None = None,
                 cancel: threading.Event | None = None) -> Encoder:
    """The encoder for ``model_id``, on the runtime measured best for this machine.

    Args:
        cancel: set to stop a first-time probe (its process is killed, nothing cached).

    Raises:
        ModelUnavailable: weights missing and not downloadable now.
        ModelLoadError: the weights exist but do not load, or ``cancel`` was set.
    """
    dev = likely_device(device)
    if dev != "cpu" or precision in TORCH_PRECISIONS:
        return ClipEncoder.load(model_id, store, device=dev, precision=precision,
                                allow_download=allow_download, progress=progress)
    weights = store.installed(model_id)
    if weights is None:
        if not allow_download:
            raise ModelUnavailable(store._missing_message(model_id, "downloads are off"))
        weights = store.download(model_id, progress)
    forced = precision if precision in ONNX_PRECISIONS else None
    choice = runtime_choice(store, weights, forced, cancel)
    folder = store.model_dir(model_id) / RUNTIME_DIR
    torch_models: dict[str, ClipEncoder] = {}

    def torch_loader(wanted: str) -> ClipEncoder:
        # A torch text tower shares the image tower's model when that runs on torch too.
        wanted = wanted if wanted in TORCH_PRECISIONS else (
            choice.visual if choice.visual in TORCH_PRECISIONS else "fp32")
        if wanted not in torch_models:
            torch_models[wanted] = ClipEncoder.load(model_id, store, device="cpu",
                                                    precision=wanted, allow_download=False)
        return torch_models[wanted]

    onnx = any(p.startswith("onnx-") for p in (choice.visual, choice.text))
    manifest = RuntimeManifest.load(folder) if onnx else None
    if manifest is None or manifest.weights_sha256 != weights.sha256:
        return torch_loader(choice.visual)  # both towers on torch (or a failed probe)
    log.info("loaded %s: %s", model_id, choice.summary())
    encoder = RuntimeEncoder(manifest, folder, choice.visual, choice.text, torch_loader)
    encoder.choice = choice
    return encoder


def known_choice(store: WeightStore, model_id: str) -> RuntimeChoice | None:
    """The recorded choice for the installed weights on this machine, without probing."""
    weights = store.installed(model_id)
    if weights is None:
        return None
    return cached_choice(store.root, choice_key(model_id, weights.sha256))


def runtime_choice(store: WeightStore, weights: InstalledWeights,
                   forced: str | None = None, cancel: threading.Event | None = None
                   ) -> RuntimeChoice:
    """The cached choice, or a fresh probe's (its graphs must still be on disk)."""
    key = choice_key(weights.model_id, weights.sha256)
    folder = store.model_dir(weights.model_id) / RUNTIME_DIR
    with _probe_lock:
        choice = cached_choice(store.root, key)
        if choice is not None and _usable(choice, forced, weights.sha256, folder):
            return choice
        with _one_probe_at_a_time(store.root, cancel):
            # Another process may have probed while this one waited for it.
            choice = cached_choice(store.root, key)
            if choice is not None and _usable(choice, forced, weights.sha256, folder):
                return choice
            choice = _probe_in_child(weights, folder, forced, cancel)
            store_choice(store.root, key, choice)
            return choice


@contextlib.contextmanager
def _one_probe_at_a_time(root: Path, cancel: threading.Event | None) -> Iterator[None]:
    """Hold the models folder's probe lock (an OS file lock, released if the process dies;
    the probe's child process ends with its parent, see runtime_measure.child_main).

    Two processes whose first loads of new weights overlap (the window and a command,
    say) would otherwise export into the same files, delete each other's graphs and time
    their rungs against each other's load. Where the lock cannot be had (a file system
    without locks, a lock file of another account) or its holder keeps it past any
    probe's time limit (a stopped process), the probe runs without it: a probe slowed by
    another is better than a model that never loads.

    Raises:
        ModelLoadError: ``cancel`` was set while waiting.
    """
    path = root / PROBE_LOCK_FILE
    lock = filelock.FileLock(str(path), fallback_to_soft=False)
    deadline = time.monotonic() + _PROBE_TIMEOUT_S + 60.0
    warned = False
    try:
        root.mkdir(parents=True, exist_ok=True)
        while not lock.is_locked:
            if cancel is not None and cancel.is_set():
                raise ModelLoadError("loading the model was cancelled")
            if time.monotonic() > deadline:
                log.warning("another process has held %s for longer than a probe may take; "
                            "measuring without it", path)
                break
            try:
                lock.acquire(timeout=0.5)
            except filelock.Timeout:  # (an OSError: caught here, before the clause below)
                if not warned:
                    warned = True
                    log.warning("waiting for another imagesearch process that is measuring "
                                "which runtime runs the model fastest")
    except (NotImplementedError, OSError) as exc:
        # filelock raises NotImplementedError where flock() does not exist (the soft
        # fallback is off): like the errnos of a file system without locks, expected.
        quiet = isinstance(exc, NotImplementedError) or exc.errno in NO_LOCK_ERRNOS
        (log.info if quiet else log.warning)(
            "cannot lock %s (%s); measuring the runtime without it", path, exc)
    try:
        yield
    finally:
        if lock.is_locked:
            lock.release()


def _usable(choice: RuntimeChoice, forced: str | None, sha256: str, folder: Path) -> bool:
    """The choice answers what is asked and its graphs are still there, for these weights
    and in this version's format."""
    if forced is not None and choice.visual != forced:
        return False
    if forced is None and choice.note.startswith("forced"):
        return False  # back to automatic: measure again rather than keep what was forced
    picks = [(t, p) for t, p in (("visual", choice.visual), ("textual", choice.text))
             if p.startswith("onnx-")]
    if not picks:
        return True
    manifest = RuntimeManifest.load(folder)
    return manifest is not None and manifest.weights_sha256 == sha256 and all(
        tower_file(folder, t, p.removeprefix("onnx-")).is_file() for t, p in picks)


def _probe_in_child(weights: InstalledWeights, folder: Path, forced: str | None,
                    cancel: threading.Event | None = None) -> RuntimeChoice:
    """Run the probe in a fresh process; torch fp32 when it cannot run (and say why)."""
    import multiprocessing

    from imagesearch.core.runtime_measure import child_main

    log.warning("measuring which runtime runs %s fastest on this CPU (once; about a "
                "minute for a base model)", weights.model_id)
    with tempfile.TemporaryDirectory(prefix="imagesearch-probe-") as tmp:
        result = Path(tmp) / "result.json"
        ctx = multiprocessing.get_context("spawn")  # a clean process: no inherited threads
        proc = ctx.Process(target=child_main, args=(weights, str(folder), forced,
                                                    str(result)), daemon=True)
        proc.start()
        deadline = time.monotonic() + _PROBE_TIMEOUT_S
        while proc.is_alive() and time.monotonic() < deadline:
            proc.join(0.2)
            if cancel is not None and cancel.is_set():
                proc.kill()  # the app is closing: a probe must not hold it up
                proc.join()
                raise ModelLoadError("loading the model was cancelled")
        if proc.is_alive():
            proc.kill()
            proc.join()
        try:
            payload: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            payload = {"error": f"the probe process ended with code {proc.exitcode}"}
    if "choice" in payload:
        choice = RuntimeChoice(**payload["choice"])
        log.warning("runtime for %s: %s", weights.model_id, choice.summary())
        return choice
    log.debug("%s", payload.get("trace", ""))
    return _fallback(str(payload.get("error")))


def _fallback(why: str) -> RuntimeChoice:
    """torch fp32 for both towers, recorded with the reason (probed again on upgrades)."""
    log.warning("the runtime probe failed (%s); using torch fp32", why)
    return RuntimeChoice(visual="fp32", text="torch", note=f"probe failed: {why}")
