"""The probe itself, run in a child process: export, time and compare every rung.

See core/runtime_probe.py for the rules; this module does the measuring and needs
torch, open_clip, onnx and onnxruntime.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from imagesearch.core.onnx_encoder import onnx_session, unit_rows
from imagesearch.core.onnx_export import (
    TOKEN_TABLE,
    RuntimeManifest,
    export_model,
    tower_file,
)
from imagesearch.core.optimized_graph import remove_forms
from imagesearch.core.runtime_probe import (
    _PROBE_BATCH,
    PROBE_TEXTS,
    SCOUT_CALLS,
    SCOUT_IMAGES,
    SCOUT_SLOWER,
    RuntimeChoice,
    _rate,
    decide_text,
    decide_visual,
    judge,
    probe_images,
)
from imagesearch.core.weights import InstalledWeights

log = logging.getLogger(__name__)


def measure(weights: InstalledWeights, folder: Path, forced: str | None = None
            ) -> RuntimeChoice:
    """Export ``weights``' model into ``folder`` and choose a runtime for each tower.

    Args:
        forced: a rung to use for images whatever the figures say ("onnx-int8", ...);
            the probe still runs so its figures are shown.
    """
    import torch

    from imagesearch.core.encoder import _build, _embed_dim

    torch.set_grad_enabled(False)
    model, spec, tokenizer = _build(weights.model_id, weights)
    model.eval()
    dim = _embed_dim(model)
    manifest = RuntimeManifest.load(folder)
    if manifest is None or manifest.weights_sha256 != weights.sha256 or not all(
            tower_file(folder, tower, v).is_file() for v in ("fp32", "int8")
            for tower in (("visual", "textual") if manifest.text else ("visual",))):
        manifest = export_model(model, tokenizer, spec, dim, weights.model_id,
                                weights.sha256, folder)

    pixels = probe_images(spec.size)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)

    def torch_images(dtype: Any) -> Any:
        low = model if dtype == torch.float32 else _copy_to(model, dtype)

        def run(px: np.ndarray) -> np.ndarray:
            x = (torch.from_numpy(px).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
            with torch.inference_mode():
                return low.encode_image(x.to(dtype)).float().numpy()  # type: ignore[no-any-return]
        return run

    tokens = tokenizer(list(PROBE_TEXTS))
    with torch.inference_mode():
        ref_txt = unit_rows(model.encode_text(tokens).float().numpy())
    rungs: dict[str, Any] = {"fp32": torch_images(torch.float32)}
    rungs["bf16"] = torch_images(torch.bfloat16)
    for variant in ("fp32", "int8"):
        session = onnx_session(tower_file(folder, "visual", variant))
        rungs[f"onnx-{variant}"] = (lambda s: lambda px: s.run(None, {"pixels": px})[0])(
            session)

    ref_img = unit_rows(rungs["fp32"](pixels))
    # A forced rung is measured in full whatever the scout says: its figures are shown.
    figures = measure_visual(rungs, pixels, ref_img, ref_txt,
                             exempt=frozenset({forced} if forced else ()))

    if manifest.text:
        from imagesearch.core.clip_tokenizer import VOCAB_FILE, ClipTokenizer

        ours = ClipTokenizer(folder / VOCAB_FILE, manifest.context_length)
        table = np.load(folder / TOKEN_TABLE, mmap_mode="r")

        def feed(texts: list[str]) -> dict[str, np.ndarray]:
            ids = ours(texts)
            return {"tokens": ids, "rows": np.ascontiguousarray(table[ids])}

        for variant in ("fp32", "int8"):
            path = tower_file(folder, "textual", variant)
            session = onnx_session(path)
            session.run(None, feed(["warm"]))
            t0 = time.perf_counter()
            session.run(None, feed(["a dog on a beach"]))
            query_ms = 1000 * (time.perf_counter() - t0)
            txt = unit_rows(session.run(None, feed(list(PROBE_TEXTS)))[0])
            fig = judge(ref_img, ref_txt, None, txt)
            fig["graph_mb"] = round(path.stat().st_size / 1e6, 1)
            fig["query_ms"] = round(query_ms, 1)
            figures[f"text onnx-{variant}"] = fig
    text = decide_text({k: v for k, v in figures.items() if k.startswith("text ")})
    visual = forced or decide_visual({k: v for k, v in figures.items()
                                      if not k.startswith("text ")},
                                     text_on_torch=text == "torch")
    _remove_unused(folder, visual, text)
    note = f"forced {forced}" if forced else ""
    return RuntimeChoice(visual=visual, text=text, figures=figures, note=note)


def measure_visual(rungs: dict[str, Any], pixels: np.ndarray, ref_img: np.ndarray,
                   ref_txt: np.ndarray, exempt: frozenset[str] = frozenset()
                   ) -> dict[str, dict[str, float]]:
    """Each image rung's faithfulness to fp32 (``ref_img``, ``rungs["fp32"]``'s unit
    embeddings of ``pixels``) and its speed.

    A rung first runs a few images beside fp32 (a scout: the best of a few calls of each,
    fp32 timed again just before, so a moment of load on the machine does not decide).
    One that takes SCOUT_SLOWER times fp32's time or more cannot end up MIN_SPEEDUP
    faster, so it is not measured further: torch bf16 on a CPU without native bf16 (about
    10x slower than fp32 on an AVX2-only EPYC) would otherwise hold up the first start by
    a minute or more. Rungs in ``exempt`` are always measured in full.
    """
    figures: dict[str, dict[str, float]] = {}
    scout = pixels[:SCOUT_IMAGES]
    for name, run in rungs.items():
        try:
            if name != "fp32" and name not in exempt:
                reference = _seconds(rungs["fp32"], scout)
                took = _seconds(run, scout)
                if took >= SCOUT_SLOWER * reference:
                    log.info("runtime probe: %s took %.2f s for %d images against fp32's "
                             "%.2f s; not measured further", name, took, len(scout),
                             reference)
                    figures[name] = {"images_per_s": round(len(scout) / took, 2),
                                     "scouted_only": 1.0}
                    continue
            emb = unit_rows(np.concatenate([run(pixels[i:i + _PROBE_BATCH])
                                            for i in range(0, len(pixels), _PROBE_BATCH)]))
            fig = judge(ref_img, ref_txt, emb, None)
            fig["images_per_s"] = round(_rate(run, pixels[:_PROBE_BATCH]), 2)
            figures[name] = fig
        except Exception as exc:  # bf16 on a CPU without it; ONNX Runtime's own errors
            if name == "fp32":
                raise  # no reference: the probe as a whole fails (torch fp32 is used)
            log.info("runtime probe: %s failed (%s)", name, exc)
    return figures


def _seconds(run: Any, pixels: np.ndarray, calls: int = SCOUT_CALLS) -> float:
    """The best of ``calls`` timed calls, after a first that pays the one-off set-up."""
    run(pixels)
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        run(pixels)
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)


def _copy_to(model: Any, dtype: Any) -> Any:
    import copy

    return copy.deepcopy(model).to(dtype)


def _remove_unused(folder: Path, visual: str, text: str) -> None:
    """Keep only the graphs the choice runs (the others are a few hundred MB)."""
    keep = {tower_file(folder, "visual", visual.removeprefix("onnx-"))
            if visual.startswith("onnx-") else None,
            tower_file(folder, "textual", text.removeprefix("onnx-"))
            if text.startswith("onnx-") else None}
    for path in folder.glob("*.onnx"):
        if path not in keep:
            path.unlink(missing_ok=True)
            remove_forms(path)


def _end_with_parent() -> None:
    """Exit as soon as the parent process is gone, however it ended (killed too: a daemon
    child outlives a SIGKILL of its parent). The parent's probe lock dies with it, and an
    orphan probe would go on exporting and deleting graphs beside the next one."""
    import multiprocessing
    import os
    import threading
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="imagesearch-probe-parent", daemon=True).start()


def child_main(weights: InstalledWeights, folder: str, forced: str | None,
               result: str) -> None:
    """Entry point of the probe's child process: the choice as JSON in ``result``."""
    import json
    import warnings
    from dataclasses import asdict

    # The exporter's and quantiser's advice is for their developers, not this app's users.
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    _end_with_parent()
    try:
        choice = measure(weights, Path(folder), forced)
        payload: dict[str, Any] = {"choice": asdict(choice)}
    except Exception as exc:  # reported to the parent, which falls back to torch
        payload = {"error": f"{type(exc).__name__}: {exc}",
                   "trace": traceback.format_exc(limit=5)}
    Path(result).write_text(json.dumps(payload), encoding="utf-8")
