"""Which runtime runs each tower on this CPU: measured once per model, CPU and versions.

The ladder for the image tower is torch fp32 (the reference), torch bf16, ONNX Runtime
fp32 and ONNX Runtime int8. A rung is *faithful* when, on a probe set of photo-like
images, every embedding keeps a cosine of at least MIN_COSINE to fp32 and the ten
nearest neighbours of each probe image (and of each probe description) are on average
at least MIN_TOP10 the same as fp32's. The fastest faithful rung is chosen if it is at
least MIN_SPEEDUP faster than fp32; otherwise ONNX Runtime fp32 if it is faithful and
about as fast (ONNX_FP32_PARITY: it spares the process torch), else torch fp32 stays.
The text tower's query is one short forward pass, so there the faithful ONNX variant
that is smallest to load is chosen (a cold query's cost), and torch only when neither
is faithful.

Why these thresholds: a cosine of 0.99 moves a photo's score by at most ~0.01 against
the ~0.1-0.3 gaps between a relevant photo and the rest that CLIP shows in practice, and
the top-10 check measures the effect on rankings directly; 0.9 means one neighbour in
ten may swap with the one just outside. On the random weights this was tuned on (the
only ones this project can test with) they are a proxy: the probe therefore runs again
on the user's real weights the first time they are loaded, since the cache key holds the
weights' checksum.

The probe runs in a child process: torch, the fp32 model and the export's memory are
gone when it ends, so a process that ends up on ONNX Runtime never holds them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from imagesearch.core.onnx_export import RUNTIME_FORMAT

log = logging.getLogger(__name__)

MIN_COSINE = 0.99
MIN_TOP10 = 0.9
MIN_SPEEDUP = 1.2
# ONNX Runtime fp32 does torch fp32's arithmetic; at this share of its speed or more it
# is preferred, as a process running it imports neither torch nor open_clip: a cold image
# query loads in a fraction of the time and memory (see decide_visual).
ONNX_FP32_PARITY = 0.9
# A rung this many times slower than fp32 on SCOUT_IMAGES images (the best of SCOUT_CALLS
# calls of each) is not measured further (core/runtime_measure.measure_visual): twice as
# slow on a few images leaves no chance of being MIN_SPEEDUP faster on a batch.
SCOUT_IMAGES, SCOUT_CALLS, SCOUT_SLOWER = 4, 2, 2.0
TIE_SCORE = 0.002  # fp32 scores this close to the tenth neighbour's count as ties
CHOICES_FILE = "runtime-choice.json"
RUNTIME_DIR = "runtime"
_PROBE_BATCH = 16
PROBE_TEXTS = (
    "a dog on a beach", "red car at night", "birthday cake with candles", "snowy mountain",
    "a cat asleep on a sofa", "city street in the rain", "two children playing football",
    "a bowl of ramen", "sunset over the sea", "an old wooden door", "grandma's kitchen",
    "a tram in the snow", "fireworks", "a bicycle against a wall", "flowers in a vase",
    "a crowded market", "a lighthouse", "a plate of pasta", "a horse in a field",
    "a person reading a book", "a bridge at dusk", "a forest path", "a computer desk",
    "a blue sailing boat",
)


@dataclass(frozen=True, slots=True)
class RuntimeChoice:
    """The decision for one model on one machine, with the figures behind it."""

    visual: str  # "onnx-int8" | "onnx-fp32" | "bf16" | "fp32"
    text: str  # "onnx-int8" | "onnx-fp32" | "torch"
    figures: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str = ""

    def summary(self) -> str:
        """One line for `models list` and the status bar tooltip."""
        parts = []
        for name, fig in self.figures.items():
            if "images_per_s" not in fig:
                continue
            if fig.get("scouted_only"):
                parts.append(f"{name} {fig['images_per_s']:.1f}/s (far slower than fp32 on "
                             f"{SCOUT_IMAGES} images: not measured further)")
                continue
            parts.append(f"{name} {fig['images_per_s']:.1f}/s"
                         + ("" if name == "fp32" else
                            f" (cos {fig.get('min_cosine', 0):.4f}, "
                            f"top-10 {fig.get('top10', 0):.2f})"))
        text = f"images: {self.visual}; text: {self.text}"
        if parts:
            text += " — probed " + ", ".join(parts)
        return text + (f"; {self.note}" if self.note else "")


def cpu_id() -> str:
    """The CPU model and a digest of its feature flags (what decides kernel speed)."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name in ("", platform.machine()):
                    name = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = value.strip()
                if name and flags:
                    break
    except OSError:
        pass
    digest = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]
    return f"{name} [{platform.machine()} {digest}]"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def choice_key(model_id: str, weights_sha256: str) -> str:
    """Per model weights, CPU, runtime versions and the exported graphs' format (a new
    format is new graphs to measure); computed without importing torch or the runtime."""
    return (f"{model_id}|{weights_sha256[:16]}|{cpu_id()}|ort {_version('onnxruntime')}"
            f"|torch {_version('torch')}|graphs {RUNTIME_FORMAT}")


def cached_choice(root: Path, key: str) -> RuntimeChoice | None:
    try:
        data = json.loads((root / CHOICES_FILE).read_text(encoding="utf-8"))
        entry = data[key]
        # Fields a newer or older version wrote are ignored rather than losing the choice.
        return RuntimeChoice(**{k: v for k, v in entry.items()
                                if k in RuntimeChoice.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_choice(root: Path, key: str, choice: RuntimeChoice) -> None:
    path = root / CHOICES_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[key] = asdict(choice)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{CHOICES_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        log.info("could not record the runtime choice; it is probed again next time")


# The probe set ----------------------------------------------------------------------------


def probe_images(size: int, groups: int = 16, per_group: int = 3) -> np.ndarray:
    """Photo-like uint8 images: smooth colour fields with shapes, in near-duplicate groups.

    Each group is one scene and variants of it (brighter, shifted), so nearest neighbours
    have real structure to keep, as a photo library's near-duplicates do.
    """
    rng = np.random.default_rng(0)
    out = np.empty((groups * per_group, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for g in range(groups):
        cell = int(rng.choice([4, 8, 16]))
        coarse = rng.integers(0, 256, (size // cell + 1, size // cell + 1, 3))
        field_ = np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:size, :size]
        ramp = rng.uniform(-80, 80, 3) * (xx if g % 2 else yy)[..., None]
        scene = field_.astype(np.float32) + ramp
        for _ in range(3):
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
            scene[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
        for v in range(per_group):
            img = scene * (1.0 + 0.15 * v) if v % 2 else np.roll(scene, 6 * v, axis=1)
            out[g * per_group + v] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def top10_overlap(ref_q: np.ndarray, ref_g: np.ndarray, cand_q: np.ndarray,
                  cand_g: np.ndarray, exclude_self: bool) -> float:
    """Mean share of each query's ten nearest gallery items (by the candidate) that fp32
    also ranks in its ten, counting near-ties with fp32's tenth as agreeing.

    A neighbour whose fp32 score is within TIE_SCORE of fp32's tenth is as good a tenth
    as any: swapping it changes no visible score. Without that allowance, embeddings
    that are all nearly alike (a random-weight network's) make rankings pure rounding
    noise and no runtime, fp32 ones included, would pass.
    """
    ref = ref_q @ ref_g.T
    cand = cand_q @ cand_g.T
    if exclude_self:
        np.fill_diagonal(ref, -np.inf)
        np.fill_diagonal(cand, -np.inf)
    tenth = -np.sort(-ref, axis=1)[:, 9:10]
    picked = np.argsort(-cand, axis=1)[:, :10]
    agree = np.take_along_axis(ref, picked, axis=1) >= tenth - TIE_SCORE
    return float(np.mean(agree))


def _rate(run: Any, pixels: np.ndarray) -> float:
    """Images per second: the best of two timed batches after a warm-up of the same shape
    (first calls pay one-off set-up that would otherwise count against the first rung)."""
    run(pixels)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        run(pixels)
        best = min(best, time.perf_counter() - t0)
    return len(pixels) / max(best, 1e-9)


def judge(ref_img: np.ndarray, ref_txt: np.ndarray, img: np.ndarray | None,
          txt: np.ndarray | None) -> dict[str, float]:
    """Faithfulness of a candidate's image (or text) embeddings against fp32's."""
    if img is not None:
        cos = float(np.min(np.sum(ref_img * img, axis=1)))
        top = min(top10_overlap(ref_img, ref_img, img, img, True),
                  top10_overlap(ref_txt, ref_img, ref_txt, img, False))
    else:
        assert txt is not None
        cos = float(np.min(np.sum(ref_txt * txt, axis=1)))
        top = top10_overlap(ref_txt, ref_img, txt, ref_img, False)
    return {"min_cosine": round(cos, 5), "top10": round(top, 3)}


def faithful(fig: dict[str, float]) -> bool:
    return fig.get("min_cosine", 0.0) >= MIN_COSINE and fig.get("top10", 0.0) >= MIN_TOP10


def decide_visual(figures: dict[str, dict[str, float]], text_on_torch: bool = False) -> str:
    """The fastest faithful rung, if it beats fp32 by the margin; else ONNX Runtime fp32
    when it is faithful and about as fast (ONNX_FP32_PARITY) and the text tower does not
    run on torch anyway (one torch model then serves both towers); else torch fp32.

    The second rule is for the cold start: on an AVX2-only AMD EPYC where no rung was
    faster by the margin, torch fp32 made a cold `imagesearch search --image` take 5.5 s
    and 1.4 GB (importing torch and open_clip and building the model), where the same
    query takes 2.1 s and 700 MB on the ONNX fp32 graph (1.2 s, 280 MB on int8).
    """
    base = figures["fp32"]["images_per_s"]
    best, best_rate = "fp32", base * MIN_SPEEDUP
    for name, fig in figures.items():
        if name == "fp32" or "images_per_s" not in fig:
            continue
        if faithful(fig) and fig["images_per_s"] >= best_rate:
            best, best_rate = name, fig["images_per_s"]
    onnx = figures.get("onnx-fp32", {})
    if (best == "fp32" and not text_on_torch and faithful(onnx)
            and not onnx.get("scouted_only")
            and onnx.get("images_per_s", 0.0) >= base * ONNX_FP32_PARITY):
        return "onnx-fp32"
    return best


def decide_text(figures: dict[str, dict[str, float]]) -> str:
    """The smallest faithful graph: a cold query's cost is mostly loading it (ViT-B-32's
    text tower measured 0.27-0.39 s to open in int8 against 0.60-0.72 s in fp32, while
    the query itself takes tens of milliseconds either way)."""
    ok = [(fig["graph_mb"], fig["query_ms"], name) for name, fig in figures.items()
          if faithful(fig)]
    return min(ok)[2].removeprefix("text ") if ok else "torch"
