"""`imagesearch eval`: the table of how good each stage is, and its JSON form."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagesearch.cli.progress import IndexProgressBar

if TYPE_CHECKING:
    from imagesearch.core.metrics import Summary
    from imagesearch.services.context import AppContext
    from imagesearch.services.evaluation import EvaluationReport, StageResult

DEFAULT_STAGES = "global,annoy,bovw,bovw-sp,local,sp,ames"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval", help="measure each search stage on a benchmark (mAP, recall, boxes, latency)",
        description="Index BENCH_DIR/db into a temporary library (or --library), run every "
                    "query of BENCH_DIR/gt.json through each stage, write "
                    "results.<stage>.json and print mAP@k (ILIAS rule), recall@1/10/100, "
                    "precision/recall/F1 at k, box IoU>=0.5 share, latency and bytes a photo.")
    p.add_argument("bench", type=Path, metavar="BENCH_DIR")
    p.add_argument("--stages", default=DEFAULT_STAGES,
                   help=f"comma-separated (default {DEFAULT_STAGES})")
    p.add_argument("-k", "--top-k", type=int, default=100, metavar="K",
                   help="results per query and the k of P/R/F1@k (default 100)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="where results.<stage>.json go (default BENCH_DIR/results)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--no-progress", action="store_true")


def run_eval(args: argparse.Namespace, ctx: AppContext, cancel: threading.Event) -> int:
    from imagesearch.services.benchmark import load_benchmark
    from imagesearch.services.evaluation import evaluate, index_benchmark

    if args.top_k < 1:
        raise ValueError("--top-k must be at least 1")
    bench = load_benchmark(args.bench.resolve())
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]

    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    say(f"indexing {len(bench.imlist)} photos of {bench.db_dir} into {ctx.settings.library_dir}")
    with IndexProgressBar(not (args.no_progress or args.json)) as bar:
        seconds = index_benchmark(ctx, bench, bar, cancel)
    report = evaluate(ctx, bench, stages, args.top_k, args.out or bench.root / "results",
                      say, cancel)
    report.index_seconds = seconds
    if args.json:
        json.dump(report_json(report), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(report))
    return 130 if cancel.is_set() else 0


def _size(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _row(name: str, s: Summary, map_ks: list[int], stage: StageResult) -> list[str]:
    box = "-" if s.box_iou50 is None else f"{s.box_iou50:.1f}"
    return ([name] + [f"{s.map_k[m]:.1f}" for m in map_ks]
            + [f"{s.recall[r]:.1f}" for r in (1, 10, 100)]
            + [f"{s.precision_k:.1f}", f"{s.recall_k:.1f}", f"{s.f1_k:.1f}", box,
               f"{s.latency_p50_ms:.0f}", f"{s.latency_p95_ms:.0f}",
               _size(stage.bytes_per_photo), _size(stage.index_bytes_per_photo)])


def format_table(report: EvaluationReport) -> str:
    k = report.top_k
    ran = [st for st in report.stages if st.summary is not None]
    map_ks = sorted(ran[0].summary.map_k) if ran and ran[0].summary else [100]
    head = (["stage"] + [f"mAP@{m}" for m in map_ks] + ["R@1", "R@10", "R@100",
            f"P@{k}", f"R@{k}", f"F1@{k}", "box IoU>=.5", "p50 ms", "p95 ms",
            "stored B/photo", "index B/photo"])
    rows = [head]
    for st in ran:
        assert st.summary is not None
        rows.append(_row(st.name, st.summary, map_ks, st))
        if st.text_summary is not None:
            rows.append(_row(f"{st.name} (text)", st.text_summary, map_ks, st))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"{report.bench}: {report.photos} photos ({report.failed_photos} failed to "
             f"index), {report.queries} queries; indexed in {report.index_seconds:.0f} s"]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(r, widths, strict=True))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [f"{st.name}: skipped, {st.note}" for st in report.stages if st.summary is None]
    return "\n".join(lines)


def _summary_json(s: Summary) -> dict[str, Any]:
    return {"queries": s.queries, "map": {str(m): round(v, 2) for m, v in s.map_k.items()},
            "recall": {str(r): round(v, 2) for r, v in s.recall.items()},
            "precision_at_k": round(s.precision_k, 2), "recall_at_k": round(s.recall_k, 2),
            "f1_at_k": round(s.f1_k, 2),
            "box_iou50": None if s.box_iou50 is None else round(s.box_iou50, 2),
            "latency_ms": {"p50": round(s.latency_p50_ms, 1),
                           "p95": round(s.latency_p95_ms, 1)}}


def report_json(report: EvaluationReport) -> dict[str, Any]:
    return {
        "bench": str(report.bench), "photos": report.photos, "queries": report.queries,
        "failed_photos": report.failed_photos, "top_k": report.top_k,
        "index_seconds": round(report.index_seconds, 1),
        "stages": {st.name: ({"skipped": st.note} if st.summary is None else {
            **_summary_json(st.summary),
            "bytes_per_photo": None if st.bytes_per_photo is None
            else round(st.bytes_per_photo, 1),
            "index_bytes_per_photo": None if st.index_bytes_per_photo is None
            else round(st.index_bytes_per_photo, 1),
            **({"text": _summary_json(st.text_summary)} if st.text_summary else {})})
            for st in report.stages},
    }
