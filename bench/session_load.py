"""What keeping a graph's optimised form saves: ONNX Runtime session loads and cold searches.

    python bench/session_load.py                                # session loads only
    python bench/session_load.py --library LIB --image FILE     # and cold `imagesearch search`

First, for each graph the default model's probe kept (real weights if installed, else the
benchmarks' random ones), fresh sessions created from the graph itself (optimised at load,
as every load did before) against sessions from its kept optimised form
(core/optimized_graph.py), alternating, --repeat each. A graph without a form gets one
written first, as the app's first load would (in the real models folder when real weights
are installed).

With --library (a library indexed with the same model, e.g. by `imagesearch index` with the
same IMAGESEARCH_MODELS; the forms are written above, before any timed run), cold
processes answer a text query and an image query, alternating between kept forms off and
on (the app's default) in the same run; medians and their ratio. GNU time measures each
process from start to exit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, weights_store
from bench.peer import QUERY, timed
from imagesearch.config import DEFAULT_MODEL
from imagesearch.core import optimized_graph
from imagesearch.core.onnx_encoder import onnx_session
from imagesearch.core.runtime_probe import RUNTIME_DIR, cpu_id

# A cold CLI run with kept forms switched off (they are too "large" to keep).
_SHIM = ("import sys; import imagesearch.core.optimized_graph as g; g.MAX_CACHED_BYTES = "
         "{limit}; from imagesearch.cli.main import main; sys.exit(main(sys.argv[1:]))")


def session_loads(folder: Path, repeat: int) -> None:
    graphs = sorted(folder.glob("*.onnx"))
    if not graphs:
        raise SystemExit(f"no graphs in {folder}: load the model once (e.g. python "
                         "bench/encode.py) so the probe exports them")
    for graph in graphs:
        onnx_session(graph, keep_optimized=True)  # writes the form if it is missing
        plain, kept = [], []
        for _ in range(repeat):
            started = time.perf_counter()
            onnx_session(graph)
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            onnx_session(graph, keep_optimized=True)
            kept.append(time.perf_counter() - started)
        form = optimized_graph.cached_form(graph)
        emit({"graph": graph.name, "graph_mb": round(graph.stat().st_size / 2**20, 1),
              "kept_form_mb": round(form.stat().st_size / 2**20, 1)
              if form is not None and form.exists() else None,
              "load_s_optimised_at_load": round(statistics.median(plain), 3),
              "load_s_from_kept_form": round(statistics.median(kept), 3),
              "ratio": round(statistics.median(kept) / statistics.median(plain), 2)})


def cold_searches(models: Path, library: Path, image: Path, repeat: int) -> None:
    env = {**os.environ, "IMAGESEARCH_MODELS": str(models), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's install caches bytecode
    queries = {"text": ["search", "-k", "10", QUERY],
               "image": ["search", "-k", "10", "--no-rerank", "--image", str(image)]}
    arms = {"forms off": 0, "forms kept": optimized_graph.MAX_CACHED_BYTES}
    for name, args in queries.items():
        runs: dict[str, list[tuple[float, float]]] = {arm: [] for arm in arms}
        for _ in range(repeat):
            for arm, limit in arms.items():
                cmd = [sys.executable, "-c", _SHIM.format(limit=limit),
                       "--library", str(library), *args]
                seconds, mb, _ = timed(cmd, env)
                runs[arm].append((seconds, mb))
        medians = {arm: statistics.median(s for s, _ in r) for arm, r in runs.items()}
        emit({"query": name, **{f"{arm} s": round(m, 2) for arm, m in medians.items()},
              **{f"{arm} peak MB": round(max(mb for _, mb in r)) for arm, r in runs.items()},
              "ratio": round(medians["forms kept"] / medians["forms off"], 2)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--library", type=Path, help="an indexed library for the cold searches")
    ap.add_argument("--image", type=Path, help="the image query (with --library)")
    args = ap.parse_args()
    if args.library is not None and args.image is None:
        ap.error("--library needs --image")
    store, kind = weights_store(args.model)
    print(f"# {args.model} ({kind} weights); CPU: {cpu_id()}", file=sys.stderr)
    session_loads(store.model_dir(args.model) / RUNTIME_DIR, args.repeat)
    if args.library is not None:
        cold_searches(store.root, args.library, args.image, args.repeat)


if __name__ == "__main__":
    main()
