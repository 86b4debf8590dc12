"""AMES speed: library descriptor extraction (photos/s) and re-ranking latency per query.

Uses the installed AMES checkpoints when present, else the real architectures (DINOv2
ViT-B/14 with registers, the 768-d detector, the 128-d matcher) with seeded random
weights written as the official files are: speed does not depend on the weights' values.

    python bench/ames.py                  # CPU: the app's CPU settings (query 200, photo 50)
    python bench/ames.py --device cuda    # GPU: fp16, query 600, photo 80, top 100 and 1,000
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit
from imagesearch.config import Settings
from imagesearch.core.ames.codec import decode_record, encode_record
from imagesearch.core.ames.models import AmesModels, AmesPaths
from imagesearch.core.ames.registry import VARIANTS
from imagesearch.core.ames.reranker import AmesSettings
from imagesearch.services.models import ModelManager


def paths(variant: str) -> tuple[AmesPaths, str]:
    manager = ModelManager(Settings(ames_model=variant))
    found = manager.ames_paths()
    if found is not None:
        return found, "real"
    import torch

    from tests.ames_random import ames_arrays, detector_arrays, dinov2_arrays, tensors

    tmp = Path(tempfile.mkdtemp(prefix="imagesearch-ames-bench-"))
    out = AmesPaths(tmp / "backbone.pth", tmp / "detector.pt", tmp / "matcher.pt")
    torch.save(tensors(dinov2_arrays(0)), out.backbone)
    torch.save({"state": tensors(detector_arrays(1))}, out.detector)
    torch.save({"state": tensors(ames_arrays(2, variant == "dist"))}, out.matcher)
    return out, "random"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--variant", default="dist", choices=sorted(VARIANTS))
    parser.add_argument("--photos", type=int, default=3, help="photos extracted and timed")
    parser.add_argument("--shortlists", type=int, nargs="+", default=[100])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import torch

    found, weights = paths(args.variant)
    models = AmesModels(found, args.device)
    variant = VARIANTS[args.variant]
    tune = AmesSettings("bench", variant.lam, variant.gamma, variant.photo_n)
    query_n, photo_n, batch = tune.for_device(models.device)
    rng = np.random.default_rng(0)
    # A 4:3 photo: 770 x 574 model pixels, 55 x 41 = 2,255 patches.
    photo = Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8))
    models.extract([photo], variant.photo_n)  # warm-up
    sync = torch.cuda.synchronize if models.device == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(args.photos):
        features = models.extract([photo], variant.photo_n)[0]
    sync()
    per_photo = (time.perf_counter() - started) / args.photos
    record = decode_record(encode_record(models.record(features)))
    query = models.query_set(models.extract([photo], query_n)[0])
    result: dict[str, object] = {
        "device": models.device, "weights": weights, "variant": args.variant,
        "extract_photos_per_s": round(1.0 / per_photo, 3),
        "extract_s_per_photo": round(per_photo, 3),
        "query_n": query_n, "photo_n": photo_n, "batch": batch,
        "bytes_per_photo": len(encode_record(models.record(features)))}
    for k in args.shortlists:
        sets = [models.photo_set(record, photo_n)] * k
        times = []
        for _ in range(args.repeats + 1):
            sync()
            t0 = time.perf_counter()
            for start in range(0, k, batch):
                models.logits(query, sets[start:start + batch])
            sync()
            times.append(time.perf_counter() - t0)
        result[f"rerank_ms_top{k}"] = round(1000 * float(np.median(times[1:])), 1)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if models.device == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    emit(result)


if __name__ == "__main__":
    main()
