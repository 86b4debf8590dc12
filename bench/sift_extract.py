"""What finding a photo's details costs at index time, one decode worker's CPU.

    python bench/sift_extract.py                 # ../shared/data/photos/animals
    python bench/sift_extract.py --photos DIR --limit 200

For each feature mode it times the app's extraction (one SIFT pass that detects and
describes, then chooses which keypoints to keep) beside the two-pass alternative (detect,
choose, then describe only the chosen: OpenCV's compute() builds the scale pyramid a second
time), on the same photos in the same run, checks that both give the same descriptors, and
prints milliseconds a photo (median of alternating runs) and their ratio. Photos are used
as decoded and also enlarged 3x (so the 384 px search size reduces them, as it does real
camera photos). One OpenCV thread, as in the decode workers.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit
from imagesearch.core import local_features as lf

DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "animals"


def two_pass(image: Image.Image, max_side: int, count: int) -> np.ndarray:
    """Detect, choose, then describe the chosen: the descriptors, RootSIFT."""
    pixels = lf._gray(image, max_side)
    sift = cv2.SIFT.create(nfeatures=max(count, lf.POOL))
    found = sift.detect(pixels, None)
    if not found:
        return np.zeros((0, 128), np.float32)
    chosen = lf.select(found, count, pixels.shape[1], pixels.shape[0])
    _, raw = sift.compute(pixels, [found[i] for i in chosen])
    return lf.root_sift(raw)


def per_photo_ms(fn: Callable[[Image.Image], object], images: list[Image.Image]) -> float:
    started = time.perf_counter()
    for image in images:
        fn(image)
    return (time.perf_counter() - started) / len(images) * 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    ap.add_argument("--limit", type=int, default=150)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    files = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"no JPEG photos under {args.photos}")
    small = [Image.open(f).convert("RGB") for f in files[:args.limit]]
    sets = {"as decoded": small,
            "enlarged 3x": [im.resize((im.width * 3, im.height * 3)) for im in small[:60]]}
    for label, images in sets.items():
        for name, mode in lf.FEATURE_MODES.items():
            ours = [lf.extract(im, mode.max_side, mode.count) for im in images[:10]]
            theirs = [two_pass(im, mode.max_side, mode.count) for im in images[:10]]
            same = all(np.allclose(a.descriptors, b, atol=1e-5)
                       for a, b in zip(ours, theirs, strict=True))
            ones, twos = [], []
            for _ in range(args.repeat):  # alternating: this machine's speed drifts
                ones.append(per_photo_ms(
                    lambda im, m=mode: lf.extract(im, m.max_side, m.count), images))
                twos.append(per_photo_ms(
                    lambda im, m=mode: two_pass(im, m.max_side, m.count), images))
            one, two = float(np.median(ones)), float(np.median(twos))
            emit({"photos": label, "size": f"{images[0].width}x{images[0].height}",
                  "mode": name, "one_pass_ms": round(one, 1), "two_pass_ms": round(two, 1),
                  "ratio": round(one / two, 2), "same_descriptors": same})
    compare_encoding(small, args.repeat)


def compare_encoding(images: list[Image.Image], repeat: int) -> None:
    """Residual codes as the app computes them (tables of codebook cross-products) beside
    FAISS's plain beam search: milliseconds a photo, and whether the codes are the same."""
    import faiss

    from imagesearch.core import feature_codec as fc

    for name, mode in lf.FEATURE_MODES.items():
        if fc.CODECS[mode.codec].kind != "rq":
            continue
        found = [lf.extract(im, mode.max_side, mode.count).descriptors for im in images]
        app = fc._residual_quantizer(mode.codec)
        plain = faiss.ResidualQuantizer(128, app.M, 8)
        faiss.copy_array_to_vector(fc._codebook(mode.codec).ravel(), plain.codebooks)
        plain.is_trained = True
        plain.max_beam_size = app.max_beam_size
        same = all(np.array_equal(app.compute_codes(d), plain.compute_codes(d))
                   for d in found[:20])
        luts, plains = [], []
        for _ in range(repeat):
            for quantizer, times in ((app, luts), (plain, plains)):
                started = time.perf_counter()
                for d in found:
                    quantizer.compute_codes(d)
                times.append((time.perf_counter() - started) / len(found) * 1000.0)
        lut, slow = float(np.median(luts)), float(np.median(plains))
        emit({"encoding": mode.codec, "mode": name, "tables_ms": round(lut, 2),
              "plain_beam_ms": round(slow, 2), "ratio": round(lut / slow, 2),
              "same_codes": same})


if __name__ == "__main__":
    main()
