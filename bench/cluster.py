"""`imagesearch index` on this machine beside `index --cluster` with 1 and 2 Ray workers.

Run: ``python bench/cluster.py [--photos DIR] [--limit 600] [--workers 1 2]
[--local-features compact|off]``.

Starts a Ray cluster on this machine the way a small real one is laid out: a head node
that runs no work (0 CPUs) and one worker node of 1 CPU per worker. Each row is a fresh
library indexed by a fresh `imagesearch index` process (the CLI as a user runs it), with
the same photos and the same model: ViT-B-32-256 with random weights (speed does not
depend on their values; bench/common.py). The wall time includes starting the workers
(each imports the model's runtime and loads the weights) and, with local features on,
learning the visual vocabulary at the end, which runs on this machine either way.
Default photos: the 1,692 `animals` photos of ../shared/data, the first --limit of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import random_store

MODEL = "ViT-B-32-256/datacomp_s34b_b86k"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "animals"


def index_once(photos: Path, models: Path, local_features: str, address: str | None,
               workers: int | None) -> float:
    """Seconds for one fresh `imagesearch index` of ``photos``."""
    with tempfile.TemporaryDirectory(prefix="imagesearch-cluster-") as tmp:
        library = Path(tmp) / "library"
        library.mkdir()
        (library / "settings.json").write_text(json.dumps({"local_features": local_features}))
        cmd = [sys.executable, "-m", "imagesearch.cli.main", "--library", str(library),
               "--model", MODEL, "index", str(photos), "--no-progress"]
        if address is not None:
            cmd += ["--cluster", address, "--cluster-workers", str(workers)]
        env = {**os.environ, "IMAGESEARCH_MODELS": str(models), "HF_HUB_OFFLINE": "1"}
        started = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"indexing failed:\n{done.stdout}\n{done.stderr}")
        return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=SHARED)
    ap.add_argument("--limit", type=int, default=600)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--local-features", default="compact", choices=["compact", "off"])
    args = ap.parse_args()
    files = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in
                   {".jpg", ".jpeg", ".png"})[:args.limit]
    if not files:
        raise SystemExit(f"no photos in {args.photos}")
    models = random_store(MODEL).root
    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory(prefix="imagesearch-cluster-photos-") as tmp:
        photos = Path(tmp)
        for f in files:
            shutil.copy2(f, photos / f.name)
        load = os.getloadavg()[0]
        rows = [("this machine (decode pool + encoder)", None, None)]
        rows += [(f"Ray, {n} worker{'s' if n > 1 else ''}", n, n) for n in args.workers]
        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 0, "include_dashboard": False})
        try:
            for _ in range(max(args.workers)):
                cluster.add_node(num_cpus=1)
            base = None
            for label, n, workers in rows:
                seconds = index_once(photos, models, args.local_features,
                                     cluster.address if n else None, workers)
                rate = len(files) / seconds
                base = base or rate
                print(f"{label:40s} {seconds:7.1f} s  {rate:6.1f} photos/s  "
                      f"({rate / base:.2f}x)", flush=True)
        finally:
            cluster.shutdown()
        print(f"{len(files)} photos, local features {args.local_features}, "
              f"load {load:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
