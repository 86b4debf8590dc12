"""What spatial verification's time goes to, and what each of its speed choices saves.

    python bench/verification_speed.py --library LIB --image QUERY [--photos 250]

LIB is a library with local features (an `imagesearch eval` or `index` run made it). Its
first --photos records (by photo id, not a query's shortlist) are re-ranked against
QUERY by the app's re-ranker (core/spatial_rerank.SpatialReranker.score: decoding, then
verification 64 photos at a time); every arm runs in turn, --repeat rounds, and prints
its median time and its ratio to the app's own setup:

    app           the shipped setup: the codec's MATCH_DIMS projection, 1,024-row chunks
    full dims     descriptors compared in all 128 dimensions (compact libraries only:
                  detailed ones are compared in full already)
    8192 rows     similarities computed 8,192 photo keypoints at a time
    decode        decoding the records alone (core/feature_codec.decode_features)

Each arm also prints how many photos it verified. The catalog is only read.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit
from imagesearch.config import Settings
from imagesearch.core import spatial_verification
from imagesearch.core.feature_codec import decode_features
from imagesearch.core.imaging import load_query_features
from imagesearch.core.spatial_rerank import SpatialReranker
from imagesearch.core.spatial_verification import QueryFeatures
from imagesearch.errors import FeatureDataError
from imagesearch.services.local_search import feature_mode


def _records(library: Path, photos: int) -> tuple[str, list[bytes]]:
    """The extractor and the first ``photos`` records, read through a read-only
    connection (the app's catalog layer would migrate an older catalog)."""
    settings = Settings.load(library)
    mode = feature_mode(settings)
    if mode is None:
        sys.exit(f"{library} keeps no local features")
    if not settings.catalog_path.is_file():
        sys.exit(f"{library} has no catalog")
    uri = settings.catalog_path.resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        blobs = [bytes(row[0]) for row in conn.execute(
            "SELECT data FROM local_features WHERE extractor = ? ORDER BY photo_id LIMIT ?",
            (mode.extractor_id, photos))]
    if not blobs:
        sys.exit(f"{library} has no local features of {mode.extractor_id} stored yet")
    return mode.extractor_id, blobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--photos", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    extractor, blobs = _records(args.library, args.photos)
    records = dict(enumerate(blobs))
    reranker = SpatialReranker(extractor)
    found = load_query_features(args.image)
    app, full = QueryFeatures(found, reranker.codec), QueryFeatures(found)

    def verified(query: QueryFeatures) -> int:
        outcome = reranker.score(query, records, threading.Event())
        return sum(1 for e in outcome.evidence.values() if e.match > 0)

    def wide_chunks() -> int:
        before = spatial_verification._CHUNK_ROWS
        spatial_verification._CHUNK_ROWS = 8192
        try:
            return verified(app)
        finally:
            spatial_verification._CHUNK_ROWS = before

    def decoded() -> int:
        count = 0
        for blob in blobs:
            try:
                decode_features(blob)
                count += 1
            except FeatureDataError:
                continue  # the re-ranker drops a damaged record too
        return count

    arms: dict[str, Callable[[], int]] = {"app": lambda: verified(app)}
    if app.projection is not None:
        arms["full dims"] = lambda: verified(full)
    arms.update({"8192 rows": wide_chunks, "decode": decoded})
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
              **({"verified": outcome[arm]} if arm != "decode" else
                 {"decoded": outcome[arm]})})


if __name__ == "__main__":
    main()
