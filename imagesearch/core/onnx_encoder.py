"""An encoder whose towers run where the probe chose: ONNX Runtime, or torch.

Each tower is loaded the first time it is needed, so a text query never reads the image
tower, indexing never reads the text tower, and neither imports torch when ONNX Runtime
runs it (a cold `imagesearch search` then imports no torch or open_clip at all).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imagesearch.core.clip_tokenizer import VOCAB_FILE, ClipTokenizer
from imagesearch.core.cpu import usable_cores
from imagesearch.core.onnx_export import TOKEN_TABLE, RuntimeManifest, tower_file
from imagesearch.core.priority_gate import PriorityGate

TorchLoader = Callable[[str], Any]  # precision -> a loaded ClipEncoder


def onnx_session(path: Path, threads: int | None = None, keep_optimized: bool = False
                 ) -> Any:
    """An ONNX Runtime CPU session for one graph file.

    Args:
        keep_optimized: read the graph's optimised form, written beside it by the first
            such load (core/optimized_graph.py): a later load takes about half the time.
    """
    import onnxruntime as ort

    def options(level: Any) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or thread_budget()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = level
        # Idle inference threads would otherwise spin for a while after each batch, taking
        # the cores the decode workers need on a small machine.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        return opts

    if keep_optimized:
        from imagesearch.core.optimized_graph import session

        return session(path, options)
    return ort.InferenceSession(str(path), options(ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                                providers=["CPUExecutionProvider"])


def thread_budget() -> int:
    """Threads for inference: OMP_NUM_THREADS where set (a cluster worker holding one CPU,
    a user's own limit), else every core this process may use."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return usable_cores()


def unit_rows(x: np.ndarray) -> np.ndarray:
    out = np.asarray(x, dtype=np.float32)
    return np.asarray(out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12),
                      dtype=np.float32)


class RuntimeEncoder:
    """The Encoder interface over a probed model: ``visual``/``text`` name each tower's
    runtime ("onnx-int8", "onnx-fp32", or a torch precision "fp32", "bf16")."""

    device = "cpu"

    def __init__(self, manifest: RuntimeManifest, folder: Path, visual: str, text: str,
                 torch_loader: TorchLoader) -> None:
        self.model_id = manifest.model_id
        self.dim = manifest.dim
        self.spec = manifest.spec
        self.visual = visual
        self.text = text
        self.precision = visual.removeprefix("onnx-")
        self.runtime = "onnxruntime" if visual.startswith("onnx-") else "torch"
        self._manifest = manifest
        self._folder = folder
        self._torch_loader = torch_loader
        self._towers: dict[str, Any] = {}
        self._load_lock = threading.Lock()
        # The tokenizer and token table have their own: a query must not wait behind the
        # image tower's load (seconds with torch) to tokenise its text.
        self._text_lock = threading.Lock()
        self._gate = PriorityGate()
        self.choice: Any = None  # the RuntimeChoice behind it, for display

    def _tower(self, name: str) -> Any:
        """The session (or torch encoder) for ``visual`` or ``textual``, loaded once."""
        tower = self._towers.get(name)
        if tower is not None:
            return tower
        with self._load_lock:
            if name not in self._towers:
                choice = self.visual if name == "visual" else self.text
                if choice.startswith("onnx-"):
                    path = tower_file(self._folder, name, choice.removeprefix("onnx-"))
                    self._towers[name] = onnx_session(path, keep_optimized=True)
                else:
                    self._towers[name] = self._torch_loader(choice)
            return self._towers[name]

    def warm(self, towers: tuple[str, ...]) -> None:
        """Load these towers now ("visual", "textual"), e.g. on a background thread."""
        for name in towers:
            self._tower(name)
            if name == "textual" and self.text.startswith("onnx-"):
                self._tokenizer()
                self._token_table()

    def encode_images(self, pixels: np.ndarray, background: bool = False) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        tower = self._tower("visual")
        if not self.visual.startswith("onnx-"):
            return np.asarray(tower.encode_images(pixels, background), dtype=np.float32)
        x = np.ascontiguousarray(pixels, dtype=np.uint8)
        with self._gate.hold(urgent=not background):
            return unit_rows(tower.run(None, {"pixels": x})[0])

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tower = self._tower("textual")
        if not self.text.startswith("onnx-"):
            return np.asarray(tower.encode_texts(texts), dtype=np.float32)
        tokens = self._tokenizer()(texts)
        rows = np.ascontiguousarray(self._token_table()[tokens], dtype=np.float32)
        with self._gate.hold(urgent=True):
            return unit_rows(tower.run(None, {"tokens": tokens, "rows": rows})[0])

    def _token_table(self) -> np.ndarray:
        table = self._towers.get("table")
        if table is None:
            with self._text_lock:
                table = self._towers.get("table")
                if table is None:  # 77 rows are read
                    table = np.load(self._folder / TOKEN_TABLE, mmap_mode="r")
                    self._towers["table"] = table
        return np.asarray(table)

    def _tokenizer(self) -> ClipTokenizer:
        tokenizer: ClipTokenizer | None = self._towers.get("tokenizer")
        if tokenizer is None:
            # A query arriving while the preload builds it waits for that one: two builds
            # at once would only share the interpreter and both finish late.
            with self._text_lock:
                tokenizer = self._towers.get("tokenizer")
                if tokenizer is None:
                    tokenizer = ClipTokenizer(self._folder / VOCAB_FILE,
                                              self._manifest.context_length)
                    self._towers["tokenizer"] = tokenizer
        return tokenizer
