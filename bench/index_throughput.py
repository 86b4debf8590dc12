"""End-to-end indexing throughput against the encoder's pure forward throughput.

    python bench/index_throughput.py                        # ../shared/data/photos/animals
    python bench/index_throughput.py --big 64               # plus 64 generated 12 MP JPEGs
    python bench/index_throughput.py --features compact detailed   # local features' cost

For each folder it prints photos/s of the whole pipeline (walk, decode in worker processes,
batched inference, catalog commits, index save) next to the model's forward-only rate at
the same batch size, and their ratio. For 12 MP photos, where decoding is a real share of
the work on a small CPU, it also prints the bound of one decode plus one forward per photo.
With --features it instead indexes the same photos with local features off and in each
mode named, alternating, and prints each mode's rate and its ratio to "off".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, load_encoder
from imagesearch.config import DEFAULT_MODEL, Settings
from imagesearch.core.imaging import decode_for_model
from imagesearch.services.context import build_context

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "animals"


def forward_rate(encoder, batch: int, seconds: float = 10.0) -> float:  # type: ignore[no-untyped-def]
    s = encoder.spec.size
    pixels = np.random.default_rng(1).integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
    encoder.encode_images(pixels)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        encoder.encode_images(pixels)
        n += batch
    return n / (time.perf_counter() - start)


def make_big_photos(folder: Path, count: int) -> None:
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"]
    rng = np.random.default_rng(0)
    for i in range(count):
        base = Image.fromarray(getattr(skimage.data, names[i % len(names)])()[..., :3])
        big = np.asarray(base.resize((4000, 3000), Image.Resampling.BILINEAR), np.int16)
        big = np.clip(big + rng.integers(-12, 12, big.shape), 0, 255).astype(np.uint8)
        Image.fromarray(big).save(folder / f"big_{i:03d}.jpg", quality=90)


def index_rate(encoder, folder: Path, batch: int, workers: int,  # type: ignore[no-untyped-def]
               local_features: str = "off") -> dict[str, float]:
    with tempfile.TemporaryDirectory() as lib:
        settings = Settings(library_dir=Path(lib), model_id=encoder.model_id,
                            batch_size=batch, decode_workers=workers,
                            local_features=local_features)
        ctx = build_context(settings, encoder=encoder)
        ctx.library.add_folder(folder)
        rates: list[float] = []
        start = time.perf_counter()
        report = ctx.indexing.run(progress=lambda p: rates.append(p.images_per_second)
                                  if p.phase == "done" else None)
        wall = time.perf_counter() - start
        ctx.close()
    n = report.added + report.failed
    return {"photos": n, "failed": report.failed, "wall_s": round(wall, 2),
            "pipeline_photos_per_s": round(rates[-1] if rates else n / wall, 1),
            "end_to_end_photos_per_s": round(n / wall, 1)}


def compare(encoder, folder: Path, args: argparse.Namespace) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Alternate forward-only and pipeline runs (this VM's speed drifts by ~10%)."""
    runs = []
    for _ in range(args.repeat):
        forward = forward_rate(encoder, args.batch)
        r = index_rate(encoder, folder, args.batch, args.workers)
        runs.append((forward, r))
    ratios = sorted(r["pipeline_photos_per_s"] / f for f, r in runs)
    forward_med = statistics.median(f for f, _ in runs)
    pipe_med = statistics.median(r["pipeline_photos_per_s"] for _, r in runs)
    last = runs[-1][1]
    return {"photos": last["photos"], "failed": last["failed"],
            "forward_only_photos_per_s": round(forward_med, 1),
            "pipeline_photos_per_s": round(pipe_med, 1),
            "ratio_median": round(statistics.median(ratios), 3),
            "ratio_range": [round(ratios[0], 3), round(ratios[-1], 3)], "runs": len(runs)}


def compare_features(encoder, folder: Path, args: argparse.Namespace  # type: ignore[no-untyped-def]
                     ) -> dict[str, object]:
    """Indexing with local features in each mode against without, runs alternating."""
    modes = ["off", *args.features]
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeat):
        for mode in modes:
            r = index_rate(encoder, folder, args.batch, args.workers, mode)
            rates[mode].append(r["end_to_end_photos_per_s"])
    off = statistics.median(rates["off"])
    return {"photos_per_s": {m: round(statistics.median(v), 1) for m, v in rates.items()},
            "ratio_to_off": {m: round(statistics.median(v) / off, 3)
                             for m, v in rates.items() if m != "off"},
            "runs": args.repeat}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--photos", type=Path, default=SHARED)
    ap.add_argument("--big", type=int, default=0, help="also index N generated 12 MP JPEGs")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="decode processes (0: auto)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--features", nargs="+", choices=["compact", "detailed"],
                    help="compare indexing with these local-feature modes against none")
    args = ap.parse_args()

    encoder, weights = load_encoder(args.model)
    common = {"model": args.model, "weights": weights, "precision": encoder.precision,
              "batch": args.batch}
    if args.features:
        emit({"folder": str(args.photos), **common,
              **compare_features(encoder, args.photos, args)})
        return
    if args.photos.is_dir():
        emit({"folder": str(args.photos), **common, **compare(encoder, args.photos, args)})
    else:
        print(f"# {args.photos} not found; skipping the real-photo run", file=sys.stderr)
    if args.big:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "big"
            make_big_photos(folder, args.big)
            samples = sorted(folder.iterdir())[:8]
            t = time.perf_counter()
            for p in samples:
                decode_for_model(p, encoder.spec)
            decode_s = (time.perf_counter() - t) / len(samples)
            result = compare(encoder, folder, args)
            forward = float(result["forward_only_photos_per_s"])  # type: ignore[arg-type]
            bound = 1.0 / (decode_s + 1.0 / forward)
            pipe = float(result["pipeline_photos_per_s"])  # type: ignore[arg-type]
            emit({"folder": "generated 12 MP JPEGs (4000x3000)", **common, **result,
                  "decode_ms_per_photo": round(1000 * decode_s, 1),
                  "bound_decode_plus_forward_per_s": round(bound, 1),
                  "ratio_to_bound": round(pipe / bound, 3)})


if __name__ == "__main__":
    main()
