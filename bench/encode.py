"""Encoder speed: images/s at batch 1 and 32, and text query latency, per model and precision.

    python bench/encode.py                      # the default model, as the probe chose
    python bench/encode.py --models MobileCLIP2-S0/dfndr2b MobileCLIP2-S2/dfndr2b \
        --precisions auto fp32 bf16 onnx-fp32 onnx-int8

Weights: the real ones if installed, otherwise random weights of the same architecture.
"auto" runs (once per model and machine) and then reuses the runtime probe's choice;
fp32/bf16 are torch; onnx-fp32/onnx-int8 force that ONNX Runtime graph for images.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, load_encoder
from imagesearch.config import DEFAULT_MODEL


def _rate(encoder, batch: int, seconds: float) -> float:  # type: ignore[no-untyped-def]
    s = encoder.spec.size
    pixels = np.random.default_rng(0).integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
    encoder.encode_images(pixels)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        encoder.encode_images(pixels)
        n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=[DEFAULT_MODEL])
    ap.add_argument("--precisions", nargs="+", default=["auto"])
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    import torch

    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}", file=sys.stderr)
    for model_id in args.models:
        for precision in args.precisions:
            encoder, weights = load_encoder(model_id, precision)
            b1 = _rate(encoder, 1, args.seconds / 2)
            b32 = _rate(encoder, 32, args.seconds)
            encoder.encode_texts(["warm up"])
            lat = []
            for q in ("a dog on a beach", "red car at night", "birthday cake with candles") * 4:
                t = time.perf_counter()
                encoder.encode_texts([q])
                lat.append(time.perf_counter() - t)
            choice = getattr(encoder, "choice", None)
            emit({"model": model_id, "weights": weights, "precision": encoder.precision,
                  "runtime": getattr(encoder, "runtime", "torch"),
                  "probe": choice.summary() if choice is not None else None,
                  "images_per_s_batch1": round(b1, 1), "images_per_s_batch32": round(b32, 1),
                  "text_query_ms_median": round(1000 * statistics.median(lat), 1)})


if __name__ == "__main__":
    main()
