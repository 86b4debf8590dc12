"""What spatial verification's time goes to, and what each of its speed choices saves.

    python bench/verification_speed.py --library LIB --image QUERY [--photos 250]

LIB is a library with compact local features (an `imagesearch eval` or `index` run made
it). The first --photos records of its catalog are decoded and verified against QUERY,
as the app's re-rank does; every arm runs in turn, --repeat rounds, and prints its
median time and its ratio to the app's own setup:

    app           the shipped setup: MATCH_DIMS projection, 1,024-row chunks
    full dims     descriptors compared in all 128 dimensions
    8192 rows     similarities computed 8,192 photo keypoints at a time
    decode        decoding the records alone (core/feature_codec.decode_features)

The verdicts of each arm are printed too: how many photos verified.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit
from imagesearch.config import Settings
from imagesearch.core import spatial_verification
from imagesearch.core.feature_codec import decode_features
from imagesearch.core.imaging import load_query_features
from imagesearch.core.local_features import LocalFeatures
from imagesearch.core.spatial_rerank import SpatialReranker
from imagesearch.core.spatial_verification import QueryFeatures, verify
from imagesearch.services.local_search import feature_mode


def _records(library: Path, photos: int) -> tuple[str, list[bytes]]:
    from imagesearch.storage.catalog import Catalog
    from imagesearch.storage.database import open_catalog_engine

    settings = Settings.load(library)
    mode = feature_mode(settings)
    if mode is None:
        sys.exit(f"{library} keeps no local features")
    catalog = Catalog(open_catalog_engine(settings.catalog_path))
    blobs: list[bytes] = []
    for chunk in catalog.iter_features(mode.extractor_id):
        blobs.extend(blob for _, blob in chunk)
        if len(blobs) >= photos:
            break
    if not blobs:
        sys.exit(f"{library} has no local features stored yet")
    return mode.extractor_id, blobs[:photos]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--photos", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    extractor, blobs = _records(args.library, args.photos)
    reranker = SpatialReranker(extractor)
    found = load_query_features(args.image)
    photos: list[LocalFeatures] = [decode_features(b) for b in blobs]
    app, full = QueryFeatures(found, reranker.codec), QueryFeatures(found)

    def verified(query: QueryFeatures) -> int:
        results = verify(query, photos, few_alike=reranker.few_alike)
        return sum(1 for r in results if r is not None and r.verified)

    def wide_chunks() -> int:
        before = spatial_verification._CHUNK_ROWS
        spatial_verification._CHUNK_ROWS = 8192
        try:
            return verified(app)
        finally:
            spatial_verification._CHUNK_ROWS = before

    arms: dict[str, Callable[[], int]] = {
        "app": lambda: verified(app),
        "full dims": lambda: verified(full),
        "8192 rows": wide_chunks,
        "decode": lambda: len([decode_features(b) for b in blobs]),
    }
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    outcome: dict[str, int] = {}
    for _ in range(args.repeat):
        for arm, run in arms.items():
            started = time.perf_counter()
            outcome[arm] = run()
            times[arm].append(time.perf_counter() - started)
    base = statistics.median(times["app"])
    for arm, measured in times.items():
        median = statistics.median(measured)
        emit({"arm": arm, "photos": len(blobs), "query keypoints": len(found),
              "median ms": round(1000 * median, 1), "ratio to app": round(median / base, 2),
              **({"verified": outcome[arm]} if arm != "decode" else {})})


if __name__ == "__main__":
    main()
