"""Cold `imagesearch search` processes, the command as shipped beside a variant, in turns.

    python bench/cold_query.py --library LIB                        # a text query
    python bench/cold_query.py --library LIB --image FILE           # an image query
    python bench/cold_query.py --library LIB --image FILE --no-rerank

Each round runs every arm once, in turn, so a machine's swings hit them alike; each arm
prints the median wall time of its processes (range) and their largest peak memory (GNU
time), then its ratio to the command as shipped. The arms:

- `shipped`: the installed `imagesearch` command (the console entry point);
- `full open` (a text query only): the same command with the quick path turned off, so
  the library is opened in full (SQLAlchemy, every service) as an image query opens it;
- `torn down`: the same search through `imagesearch.cli.main.main`, which returns to the
  interpreter instead of ending the process once the hits are printed, so Python frees
  every module and object before the process exits.

The library is only read (a search writes nothing to it); no app should have it open, or
the search is answered over its socket. Models come from $IMAGESEARCH_MODELS as usual.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peer import QUERY, timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", type=Path, required=True)
    ap.add_argument("--image", type=Path, help="an image query instead of a text query")
    ap.add_argument("--text", default=QUERY)
    ap.add_argument("--no-rerank", action="store_true")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    query = ["--image", str(args.image)] if args.image else [args.text]
    if args.no_rerank:
        query.append("--no-rerank")
    search = ["--library", str(args.library), "search", "-k", "10", *query]
    arms = {"shipped": [str(Path(sys.executable).with_name("imagesearch")), *search]}
    if not args.image:
        arms["full open"] = [sys.executable, "-c",
                             "import imagesearch.cli.main as m; "
                             "m._answered_at_once = lambda *_: False; m.entry()", *search]
    arms["torn down"] = [sys.executable, "-c",
                         "import sys; from imagesearch.cli.main import main; sys.exit(main())",
                         *search]
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's install caches bytecode
    for cmd in arms.values():
        timed(cmd, env)  # warms the page cache and checks that the command runs
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    for _ in range(args.repeat):
        for name, cmd in arms.items():
            seconds, mb, _out = timed(cmd, env)
            runs[name].append((seconds, mb))
    from imagesearch.core.runtime_probe import cpu_id

    print(f"# {'image' if args.image else 'text'} query, {args.repeat} rounds; CPU: "
          f"{cpu_id()}; load after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    base = statistics.median(s for s, _ in runs["shipped"])
    for name, values in runs.items():
        seconds = [s for s, _ in values]
        median = statistics.median(seconds)
        print(f"{name:10s} {median:.2f} s ({min(seconds):.2f}-{max(seconds):.2f}), "
              f"{max(mb for _, mb in values):.0f} MB, {median / base:.2f}x shipped")


if __name__ == "__main__":
    main()
