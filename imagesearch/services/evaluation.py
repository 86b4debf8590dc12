"""`imagesearch eval`: index a benchmark's photos, run its queries through each stage, score.

A benchmark folder (ROxford/RParis and ILIAS ship their ground truth the same way):

    db/        the photos searched (subfolders allowed)
    queries/   the query images
    gt.json    {"imlist": [db paths relative to db/], "qimlist": [query file names],
                "gnd": [{"ok": [db indices], "junk": [...], "boxes": {"i": [x0,y0,x1,y1]}}],
                "text": [{"query": "...", "ok": [db indices]}]}      (junk, boxes, text optional)

Stages: global (the open_clip embedding, FAISS), annoy (the same vectors in Annoy), bovw
(tf-idf bag of words, the classic baseline), bovw-sp (+ spatial verification), local (the
ASMK shortlist from local features), sp (the best shortlist + spatial verification),
sp-all (every photo verified, no shortlist: slow, to see what the shortlist costs) and
ames (+ AMES). A stage whose model or package is missing is skipped with a note.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagesearch.core.metrics import Summary, summarise
from imagesearch.errors import ImageSearchError
from imagesearch.services.benchmark import Benchmark
from imagesearch.services.context import AppContext
from imagesearch.services.stage_runners import STAGES, StageRun, make_runner

log = logging.getLogger(__name__)

Report = Callable[[str], None]


class EvaluationError(ImageSearchError):
    """The benchmark cannot be evaluated (a bad gt.json, a missing image, ...)."""


@dataclass
class StageResult:
    name: str
    summary: Summary | None = None
    text_summary: Summary | None = None  # text-to-image queries (global stages only)
    bytes_per_photo: float | None = None  # stored in the catalog
    index_bytes_per_photo: float | None = None  # in derived index files
    note: str = ""  # why it was skipped


@dataclass
class EvaluationReport:
    bench: Path
    photos: int
    queries: int
    top_k: int
    stages: list[StageResult] = field(default_factory=list)
    index_seconds: float = 0.0
    failed_photos: int = 0


def evaluate(ctx: AppContext, bench: Benchmark, stages: Sequence[str], top_k: int,
             out_dir: Path, report: Report | None = None,
             cancel: threading.Event | None = None) -> EvaluationReport:
    """Run every query through each stage; write results.<stage>.json into ``out_dir``."""
    say = report or (lambda _: None)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise EvaluationError(f"unknown stage {unknown[0]!r}; known: {', '.join(STAGES)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = EvaluationReport(bench.root, len(bench.imlist), len(bench.qimlist), top_k)
    ids = bench.photo_ids(ctx)
    result.failed_photos = bench.failed
    map_ks = [100] + ([1000] if len(bench.imlist) >= 1000 else [])
    for name in stages:
        if cancel is not None and cancel.is_set():
            break
        runner = make_runner(name, ctx, ids)
        if isinstance(runner, str):
            say(f"{name}: skipped ({runner})")
            result.stages.append(StageResult(name, note=runner))
            continue
        say(f"{name}: {len(bench.qimlist)} image queries"
            + (f", {len(bench.texts)} text queries" if runner.takes_text and bench.texts
               else ""))
        stage = StageResult(name, bytes_per_photo=runner.bytes_per_photo(),
                            index_bytes_per_photo=runner.index_bytes_per_photo())
        runs = [runner.image(bench.query_path(q), max(top_k, max(map_ks)))
                for q in bench.qimlist]
        _write_results(out_dir / f"results.{name}.json", bench, bench.qimlist, runs, top_k)
        stage.summary = _summary(bench, runs, top_k, map_ks)
        if runner.takes_text and bench.texts:
            text_runs = [runner.text(t.query, max(top_k, max(map_ks))) for t in bench.texts]
            if all(r is not None for r in text_runs):
                runs_t = [r for r in text_runs if r is not None]
                _write_results(out_dir / f"results.{name}-text.json", bench,
                               [t.query for t in bench.texts], runs_t, top_k)
                stage.text_summary = summarise(
                    [r.ranking for r in runs_t], [set(t.ok) for t in bench.texts],
                    [set() for _ in bench.texts], [r.seconds for r in runs_t], top_k, map_ks)
        result.stages.append(stage)
    return result


def _summary(bench: Benchmark, runs: Sequence[StageRun], top_k: int, map_ks: list[int]
             ) -> Summary:
    return summarise(
        [r.ranking for r in runs], [set(g.ok) for g in bench.gnd],
        [set(g.junk) for g in bench.gnd], [r.seconds for r in runs], top_k, map_ks,
        boxes=[(r.boxes, g.boxes) for r, g in zip(runs, bench.gnd, strict=True)])


def _write_results(path: Path, bench: Benchmark, names: Sequence[str],
                   runs: Sequence[StageRun], top_k: int) -> None:
    data: dict[str, list[dict[str, Any]]] = {}
    for name, run in zip(names, runs, strict=True):
        data[name] = [{"path": bench.imlist[i], "score": round(s, 6),
                       "box": None if run.boxes.get(i) is None
                       else [round(v, 1) for v in run.boxes[i]]}  # type: ignore[union-attr]
                      for i, s in zip(run.ranking[:top_k], run.scores[:top_k], strict=True)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def index_benchmark(ctx: AppContext, bench: Benchmark,
                    progress: Callable[[Any], None] | None = None,
                    cancel: threading.Event | None = None) -> float:
    """Add db/ to the library, index it and build the local-feature index; seconds taken."""
    started = time.perf_counter()
    folder = ctx.library.add_folder(bench.db_dir)
    ctx.indexing.run([folder.id], progress=progress, cancel=cancel)
    ctx.local.refresh(cancel=cancel)
    return time.perf_counter() - started
