"""ONNX Runtime sessions that skip the graph optimisation after the first load.

Creating a session optimises the graph first (fusing layer norms, GELU, the quantised
matrix products, ...): about 0.2 s for each tower of ViT-B-32-256 on 2 cores. ONNX Runtime
can write the optimised graph out, and a session loads that one in about half the time
(`python bench/session_load.py`). So the first load in a models folder writes it beside
its graph, and later loads read it.

The saved form holds the "extended" optimisations, which ONNX Runtime applies for its CPU
provider whatever the CPU; the layout optimisations of its "all" level, which depend on
the CPU's vector width, still run at every load, as they did on the graph itself, so a
session computes exactly what it did before. A form's name carries the ONNX Runtime
version and the platform, and a digest of the graph's size and modification time: a graph
exported again makes its old forms useless, and they are removed; a form of another
version or platform (two installations sharing a models folder) is kept beside the
current one, at most one of them. Graphs over MAX_CACHED_BYTES or with external data get
no form. Where a form cannot be written the graph itself is loaded, optimised once as
before: in a read-only models folder (found out by creating the temporary file, which
costs nothing), or where ONNX Runtime cannot save or read back a graph's form, which an
`.unkept` marker beside the graph then records for this graph and version (delete it to
try again). A damaged form, or a write cut short (a full disk), is written again at the
next load.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_PARTIAL_AGE_S = 3600.0

SUFFIX = ".optimized"  # <graph>.onnx.<ORT version>-<graph digest>.optimized, beside it
UNKEPT = ".unkept"  # a marker: this graph's form could not be written with this version
# Writing a form takes a second copy of the graph in memory (339 MB at the peak for the
# 92 MB image tower, against 219 MB for a plain load), and graphs over 2 GB keep their
# weights in a separate file that a form would need too: larger graphs load as they are.
MAX_CACHED_BYTES = 600_000_000

OptionsFactory = Callable[[Any], Any]  # an ORT GraphOptimizationLevel -> SessionOptions


def _version_tag() -> str:
    """ONNX Runtime's version and the platform: forms of another are kept beside ours."""
    import onnxruntime as ort

    tag = f"{ort.__version__}.{sys.platform}.{platform.machine()}"
    return "".join(c if c.isalnum() or c in "._" else "_" for c in tag)


def cached_form(graph: Path) -> Path | None:
    """Where ``graph``'s optimised form is kept, or None when it is not kept."""
    try:
        st = graph.stat()
    except OSError:
        return None
    if st.st_size > MAX_CACHED_BYTES or graph.with_name(graph.name + ".data").exists():
        return None
    digest = hashlib.sha256(f"{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return graph.with_name(f"{graph.name}.{_version_tag()}-{digest}{SUFFIX}")


def siblings(graph: Path) -> list[Path]:
    """Every file kept for ``graph``: its forms, markers and unfinished writes."""
    return [p for p in graph.parent.glob(f"{graph.name}.*")
            if p.name.endswith((SUFFIX, UNKEPT, ".partial"))]


def remove_forms(graph: Path, keep: Path | None = None) -> None:
    """Removes what is kept for ``graph``; with ``keep``, the forms for another graph
    (exported again since), all but the newest form of another ONNX Runtime version or
    platform, and unfinished writes over an hour old (younger ones may be another
    process's, still being written)."""
    others = []
    for path in siblings(graph):
        if path == keep or (keep is not None and path.name.endswith(".partial")
                            and time.time() - _mtime(path) < _PARTIAL_AGE_S):
            continue
        if keep is not None and path.name.endswith(SUFFIX) \
                and _digest(path) == _digest(keep):
            others.append(path)  # this graph, another ONNX Runtime version
            continue
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    others.sort(key=_mtime, reverse=True)
    for path in others[1:]:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _digest(form: Path) -> str:
    return form.name.removesuffix(SUFFIX).rsplit("-", 1)[-1]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def session(graph: Path, options: OptionsFactory) -> Any:
    """A CPU session for ``graph``, from its optimised form when there is one."""
    import onnxruntime as ort

    every = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    saved = cached_form(graph)
    if saved is not None and (saved.is_file() or not saved.with_suffix(UNKEPT).exists()):
        fresh = not saved.is_file()
        if fresh:
            _write(graph, saved, options)
        if saved.is_file():
            try:
                return ort.InferenceSession(str(saved), options(every), providers=providers)
            except Exception as exc:  # ORT's own error types: a damaged form
                log.warning("the optimised form of %s cannot be loaded (%s)%s", graph.name,
                            exc, "" if fresh else "; it is written again at the next load")
                with contextlib.suppress(OSError):
                    saved.unlink(missing_ok=True)
                    if fresh:  # written whole just now: this version cannot read its own
                        saved.with_suffix(UNKEPT).touch()
    return ort.InferenceSession(str(graph), options(every), providers=providers)


def _write(graph: Path, saved: Path, options: OptionsFactory) -> None:
    """Write ``graph``'s optimised form to ``saved``, whole or not at all."""
    import onnxruntime as ort

    try:
        handle, name = tempfile.mkstemp(dir=graph.parent, prefix=f"{graph.name}.",
                                        suffix=".partial")
        os.close(handle)
    except OSError as exc:  # a read-only models folder: a plain load, no second try
        log.info("the optimised form of %s cannot be kept here (%s)", graph.name, exc)
        return
    partial = Path(name)
    opts = options(ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    opts.optimized_model_filepath = str(partial)
    try:
        ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own error types: it cannot save this graph whole
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        if not saved.is_file():
            log.info("the optimised form of %s was not kept (%s)", graph.name, exc)
            with contextlib.suppress(OSError):
                saved.with_suffix(UNKEPT).touch()  # not tried again: graph and version
        return
    try:
        # Readable by whoever may read the graph (mkstemp made it owner-only).
        os.chmod(partial, graph.stat().st_mode & 0o666)
        # Whole on disk before it takes the form's name. (Windows flushes only a handle
        # open for writing; a file system that cannot flush still gets the form.)
        with open(partial, "r+b") as written, contextlib.suppress(OSError):
            os.fsync(written.fileno())
        os.replace(partial, saved)
    except OSError as exc:  # a full disk, a rival's clean-up: tried again next time
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        if not saved.is_file():
            log.info("the optimised form of %s was not kept (%s)", graph.name, exc)
        return
    with contextlib.suppress(OSError):
        remove_forms(graph, keep=saved)
