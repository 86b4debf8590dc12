"""ONNX Runtime sessions that skip the graph optimisation after the first load.

Creating a session optimises the graph first (fusing layer norms, GELU, the quantised
matrix products, ...): about 0.2 s of a cold `imagesearch search`'s 1 s for the text tower
on 2 cores, and as much for the image tower. ONNX Runtime can write the optimised graph
out; loading that one takes about 0.06-0.1 s (`python bench/session_load.py`). So the first
load in a models folder writes it beside its graph, and later loads read it.

The saved form is optimised at the "extended" level, which ONNX Runtime keeps portable
across CPUs (only its "all" level may bake in the CPU's own layouts), and is loaded at the
"all" level as the graph itself is, so a session computes exactly what it did before. Its
name carries the ONNX Runtime version and the graph's size and modification time: a new
release, or a graph exported again, makes a new one and the old one is removed. Where it
cannot be written (a read-only models folder) or read back (a damaged file), the graph
itself is loaded, as before, and nothing fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUFFIX = ".optimized"  # <graph>.onnx.<key>.optimized, beside the graph
# Above this a graph's weights would need a separate external-data file when written out;
# such graphs are loaded as they are.
MAX_CACHED_BYTES = 1_500_000_000

OptionsFactory = Callable[[int], Any]  # an ORT GraphOptimizationLevel -> SessionOptions


def cached_form(graph: Path) -> Path | None:
    """Where ``graph``'s optimised form is kept, or None when it is not kept."""
    import onnxruntime as ort

    try:
        st = graph.stat()
    except OSError:
        return None
    if st.st_size > MAX_CACHED_BYTES:
        return None
    key = hashlib.sha256(f"{ort.__version__}|{st.st_size}|{st.st_mtime_ns}".encode())
    return graph.with_name(f"{graph.name}.{key.hexdigest()[:16]}{SUFFIX}")


def siblings(graph: Path) -> list[Path]:
    """Every optimised form of ``graph`` on disk, current or stale (and unfinished ones)."""
    return [p for p in graph.parent.glob(f"{graph.name}.*")
            if p.name.endswith(SUFFIX) or p.name.endswith(".partial")]


def remove_forms(graph: Path, keep: Path | None = None) -> None:
    for path in siblings(graph):
        if path != keep:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)


def session(graph: Path, options: OptionsFactory) -> Any:
    """A CPU session for ``graph``, from its optimised form when there is one."""
    import onnxruntime as ort

    level = ort.GraphOptimizationLevel
    providers = ["CPUExecutionProvider"]
    saved = cached_form(graph)
    if saved is None:
        return ort.InferenceSession(str(graph), options(level.ORT_ENABLE_ALL),
                                    providers=providers)
    if saved.is_file():
        try:
            return ort.InferenceSession(str(saved), options(level.ORT_ENABLE_ALL),
                                        providers=providers)
        except Exception as exc:  # ORT's own error types: a bad file
            log.warning("the optimised form of %s cannot be loaded (%s); writing it again",
                        graph.name, exc)
            remove_forms(graph)
    _write(graph, saved, options)
    if saved.is_file():
        try:
            return ort.InferenceSession(str(saved), options(level.ORT_ENABLE_ALL),
                                        providers=providers)
        except Exception as exc:
            log.warning("the optimised form of %s cannot be loaded (%s)", graph.name, exc)
            remove_forms(graph)
    return ort.InferenceSession(str(graph), options(level.ORT_ENABLE_ALL), providers=providers)


def _write(graph: Path, saved: Path, options: OptionsFactory) -> None:
    """Write ``graph``'s optimised form to ``saved`` (whole or not at all)."""
    import onnxruntime as ort

    partial = saved.with_name(f"{graph.name}.{os.getpid()}.partial")
    opts = options(ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    opts.optimized_model_filepath = str(partial)
    try:
        ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        os.replace(partial, saved)
    except Exception as exc:  # a read-only folder, a full disk, ORT's own
        log.info("the optimised form of %s was not kept (%s)", graph.name, exc)
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        return
    remove_forms(graph, keep=saved)  # older releases' forms, and unfinished ones
