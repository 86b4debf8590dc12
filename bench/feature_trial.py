"""Which keypoints a photo keeps, how they are stored, and how the query is found: a trial.

    python bench/feature_trial.py BENCH_DIR            # e.g. what make_instance_bench.py built
    python bench/feature_trial.py BENCH_DIR --negatives 300 --queries 20

The choices of core/local_features.py and core/feature_codec.py (how many keypoints,
chosen how, stored with which codec, the query found at which size) were made with this.
Every trial verifies the same candidates with the app's own matching and verification
(core/spatial_verification.py): for each query its positives and a seeded sample of other
photos of the benchmark (``--negatives``), ranked by verified keypoints. That is a quick,
partial version of ``imagesearch eval --stages sp-all``: its mAP@100 is higher than the
full evaluation's (fewer negatives to outrank a positive), so read it for differences
between trials in one run, not as the figure a library gets. Keypoints are found once per
photo (a pool of 1,000, as the app does) and every trial chooses from that pool.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit
from imagesearch.core import local_features as lf
from imagesearch.core.feature_codec import CODECS, decode_features, encode_features
from imagesearch.core.imaging import _open_query, open_image
from imagesearch.core.metrics import average_precision, box_hits
from imagesearch.core.spatial_rerank import match_confidence
from imagesearch.core.spatial_verification import FEW_INLIERS_SIMILARITY, QueryFeatures, verify


@dataclass(frozen=True, slots=True)
class Pool:
    """Every keypoint SIFT found in one photo, before choosing."""

    keypoints: list[Any]  # cv2.KeyPoint-like: pt, size, response
    features: lf.LocalFeatures  # all of them, raw RootSIFT, original pixels
    searched: tuple[int, int]  # the size they were searched at


class _Point:
    __slots__ = ("pt", "response", "size")

    def __init__(self, pt: tuple[float, float], size: float, response: float) -> None:
        self.pt, self.size, self.response = pt, size, response


def find_pool(path: Path) -> Pool:
    import cv2

    cv2.setNumThreads(1)
    mode = lf.FEATURE_MODES[lf.DEFAULT_FEATURE_MODE]
    with open(path, "rb") as f:
        img, facts = open_image(f, path.name, draft_size=64, file_size=os.path.getsize(path),
                                draft_long_side=mode.max_side)
    pixels = lf._gray(img, mode.max_side)
    found, raw = cv2.SIFT.create(nfeatures=lf.POOL).detectAndCompute(pixels, None)
    if not found:
        return Pool([], lf.empty_features(facts.width, facts.height), pixels.shape[::-1])
    to = facts.width / pixels.shape[1]
    points = [_Point((k.pt[0], k.pt[1]), k.size, k.response) for k in found]
    features = lf.LocalFeatures(
        lf.root_sift(raw), np.array([k.pt for k in found], np.float32) * to,
        np.array([k.size for k in found], np.float32) * to,
        np.array([k.angle for k in found], np.float32), facts.width, facts.height)
    return Pool(points, features, (pixels.shape[1], pixels.shape[0]))


Choose = Callable[[list[Any], int, tuple[int, int]], np.ndarray]


def choose_app(keypoints: list[Any], count: int, searched: tuple[int, int]) -> np.ndarray:
    return lf.select(keypoints, count, *searched)


def choose_strongest(keypoints: list[Any], count: int, _: tuple[int, int]) -> np.ndarray:
    response = np.array([k.response for k in keypoints], np.float32)
    return np.sort(np.argsort(-response, kind="stable")[:count])


@dataclass(frozen=True, slots=True)
class Trial:
    name: str
    count: int
    codec: str | None  # None: descriptors as found (no storage loss)
    choose: Choose = choose_app
    query_side: int = lf.QUERY_MAX_SIDE

    def kept(self, pool: Pool) -> np.ndarray:
        return self.choose(pool.keypoints, self.count, pool.searched)


_OLD = "pq8"  # the compact mode's former codec, trained here as tools/ trained it


@functools.lru_cache(maxsize=1)
def _old_quantizer() -> Any:
    import faiss

    from tools.train_feature_codebooks import training_descriptors

    pq = faiss.ProductQuantizer(128, 8, 8)
    pq.cp.seed = 1234
    pq.cp.niter = 40
    pq.train(np.ascontiguousarray(training_descriptors()))
    return pq


def stored_as(features: lf.LocalFeatures, codec: str | None) -> tuple[lf.LocalFeatures, int]:
    """``features`` as search would read them back, and the record's bytes."""
    if codec is None:
        return features, 0
    if codec != _OLD:
        blob = encode_features(features, codec)
        return decode_features(blob), len(blob)
    back = decode_features(encode_features(features, "pq16"))  # its geometry, same 32 bits
    if len(features):
        pq = _old_quantizer()
        x = pq.decode(pq.compute_codes(np.ascontiguousarray(features.descriptors)))
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
        back = lf.LocalFeatures(x, back.xy, back.scale, back.angle, back.width, back.height)
    return back, 20 + 12 * len(features)


def query_features(path: Path, side: int, codec: str | None) -> QueryFeatures:
    img, facts = _open_query(path, 64, side)
    return QueryFeatures(lf.extract(img, side, lf.QUERY_COUNT, (facts.width, facts.height)),
                         codec if codec in CODECS else None)  # compared as the app does


def run_trial(trial: Trial, gt: dict[str, Any], bench: Path, pools: dict[int, Pool],
              candidates: list[list[int]]) -> dict[str, object]:
    stored: dict[int, lf.LocalFeatures] = {}
    sizes: list[int] = []

    def library_photo(i: int) -> lf.LocalFeatures:
        if i not in stored:
            stored[i], size = stored_as(pools[i].features.take(trial.kept(pools[i])),
                                        trial.codec)
            sizes.append(size)
        return stored[i]

    started = time.perf_counter()
    aps, good, counted = [], 0, 0
    for q, name in enumerate(gt["qimlist"]):
        truth = gt["gnd"][q]
        positives, junk = set(truth["ok"]), set(truth.get("junk", []))
        if not positives or not candidates[q]:
            continue
        query = query_features(bench / "queries" / name, trial.query_side, trial.codec)
        ids = candidates[q]
        results = verify(query, [library_photo(i) for i in ids],
                         few_alike=FEW_INLIERS_SIMILARITY.get(trial.codec or ""))
        inliers = [r.inliers if r is not None and r.verified else 0 for r in results]
        order = sorted(range(len(ids)), key=lambda j: (-match_confidence(inliers[j]), ids[j]))
        ranking = [ids[j] for j in order]
        boxes = {ids[j]: r.box if r is not None and r.verified else None
                 for j, r in enumerate(results)}
        true_boxes = {int(k): v for k, v in truth.get("boxes", {}).items()}
        aps.append(average_precision(ranking, positives, 100, junk))
        g, c = box_hits(ranking, boxes, true_boxes, 10, junk)
        good, counted = good + g, counted + c
    return {"trial": trial.name, "map100": round(100 * float(np.mean(aps)), 1),
            "boxes_iou50": round(100 * good / max(counted, 1), 1),
            "keypoints": round(float(np.mean([len(f) for f in stored.values()])), 1),
            "bytes_a_photo": round(float(np.mean(sizes))) if trial.codec else None,
            "seconds": round(time.perf_counter() - started, 1)}


def trials() -> list[Trial]:
    compact = lf.FEATURE_MODES["compact"]
    detailed = lf.FEATURE_MODES["detailed"]
    # Three alike inliers verify only with the compact codec (FEW_INLIERS_SIMILARITY), so
    # the trials of other codecs also differ from the app's by that rule.
    return [
        Trial("compact (the app)", compact.count, compact.codec),
        Trial("compact, descriptors unquantised", compact.count, None),
        Trial("compact, the strongest only (no grid)", compact.count, compact.codec,
              choose_strongest),
        Trial("compact, query found at 800 px", compact.count, compact.codec, query_side=800),
        Trial("compact as it was: 160 keypoints, 8-byte product codes, query at 800 px",
              160, _OLD, query_side=800),
        Trial("detailed (the app)", detailed.count, detailed.codec),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path)
    ap.add_argument("--negatives", type=int, default=150,
                    help="other photos verified per query (seeded sample)")
    ap.add_argument("--queries", type=int, default=0, help="only the first N queries")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    gt = json.loads((args.bench / "gt.json").read_text())
    if args.queries:
        gt["qimlist"], gt["gnd"] = gt["qimlist"][:args.queries], gt["gnd"][:args.queries]
    rng = np.random.default_rng(args.seed)
    everyone = np.arange(len(gt["imlist"]))
    candidates = []
    for truth in gt["gnd"]:
        ok = set(truth["ok"]) | set(truth.get("junk", []))
        others = np.setdiff1d(everyone, sorted(ok))
        sample = rng.choice(others, min(args.negatives, len(others)), replace=False)
        candidates.append(sorted(set(truth["ok"]) | {int(i) for i in sample}))
    needed = sorted({i for c in candidates for i in c})
    started = time.perf_counter()
    paths = [args.bench / "db" / gt["imlist"][i] for i in needed]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as workers:
        pools = dict(zip(needed, workers.map(find_pool, paths, chunksize=16), strict=True))
    print(f"# {len(needed)} photos' keypoints found in {time.perf_counter() - started:.0f} s; "
          f"{len(gt['qimlist'])} queries, {args.negatives} negatives each", file=sys.stderr)
    for trial in trials():
        emit(run_trial(trial, gt, args.bench, pools, candidates))


if __name__ == "__main__":
    main()
