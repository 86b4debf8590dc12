"""The CLI's commands: each takes parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagesearch.cli.evaluation import run_eval
from imagesearch.cli.progress import DownloadBar, IndexProgressBar
from imagesearch.cli.remote import print_hits
from imagesearch.domain import LOCAL_INDEX_PHASE, IndexProgress, IndexReport, LibraryStatus, Query
from imagesearch.errors import ImageSearchError, ModelUnavailable, QueryError
from imagesearch.services.query_server import hit_json
from imagesearch.services.searching import split_negatives

if TYPE_CHECKING:
    from imagesearch.services.context import AppContext

ContextFactory = Callable[[argparse.Namespace], "AppContext"]


def run(args: argparse.Namespace, make_context: ContextFactory,
        cancel: threading.Event) -> int:
    if args.command == "eval" and args.library is None:
        # A benchmark is indexed into a library of its own, gone afterwards.
        with tempfile.TemporaryDirectory(prefix="imagesearch-eval-") as tmp:
            args.library = Path(tmp)
            return _run(args, make_context, cancel)
    return _run(args, make_context, cancel)


def _run(args: argparse.Namespace, make_context: ContextFactory,
         cancel: threading.Event) -> int:
    ctx = make_context(args)
    code = 1
    try:
        handler = _HANDLERS[args.command]
        code = handler(args, ctx, cancel)
        return code
    finally:
        warnings = ctx.close()
        if args.command == "watch":  # the others reported theirs with each run
            for warning in warnings:
                print(f"warning: {warning}", file=sys.stderr)
        if ctx.unfinished:
            # A thread still inside FAISS (a vocabulary being learned when `watch` was
            # stopped) would crash the interpreter's exit; the catalog is closed and
            # committed, so the process ends without waiting for it.
            print("stopped without waiting for: " + ", ".join(ctx.unfinished),
                  file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _index(args: argparse.Namespace, ctx: AppContext, cancel: threading.Event) -> int:
    folder_ids = None
    if args.paths:
        folder_ids = [ctx.library.add_folder(p).id for p in args.paths]
    elif not ctx.library.folders():
        raise ImageSearchError("The library has no folders yet: imagesearch index FOLDER")
    # Without the model, photos can still be indexed for search by image.
    _ensure_weights(ctx, optional=ctx.local.mode is not None)
    cluster = None
    workers = getattr(args, "cluster_workers", None)
    if workers is not None and workers < 1:
        raise ImageSearchError("--cluster-workers must be at least 1.")
    if getattr(args, "cluster", None):
        from imagesearch.services.cluster import ClusterSource

        if ctx.models.weights_present():
            # The first load on this CPU measures which runtime is fastest and records
            # the choice in the models folder: made here once, so the workers read it
            # instead of all measuring at once into the same folder.
            ctx.models.encoder()
        cluster = ClusterSource(ctx.settings, args.cluster, args.cluster_workers)
        ctx.indexing.cluster = cluster
        print(f"indexing on the Ray cluster at {args.cluster}: {cluster.plan.describe()}",
              file=sys.stderr)
        if cluster.gpus_unusable:
            print(f"warning: {cluster.gpus_unusable} GPU worker(s) found no CUDA device "
                  "torch can use and embed on their CPUs", file=sys.stderr)
    try:
        with IndexProgressBar(not args.no_progress) as bar:
            report = ctx.indexing.run(folder_ids, progress=bar, cancel=cancel)
    finally:
        if cluster is not None:
            ctx.indexing.cluster = None
            cluster.close()
    _refresh_local_index(ctx, report, cancel, quiet=args.no_progress)
    print(_describe(report))
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 130 if report.cancelled else 0


def _refresh_local_index(ctx: AppContext, report: IndexReport, cancel: threading.Event,
                         quiet: bool = False) -> None:
    """Bring the index of photo details up to date before a one-shot command ends (its
    context refreshes nothing in the background: the process is about to exit)."""
    if ctx.local.mode is None or report.cancelled or cancel.is_set():
        return
    _build_local_index(ctx, cancel, quiet)


def _build_local_index(ctx: AppContext, cancel: threading.Event, quiet: bool = False) -> None:
    with IndexProgressBar(not quiet) as bar:
        ctx.local.refresh(progress=lambda done, total: bar(
            IndexProgress(LOCAL_INDEX_PHASE, done, total)), cancel=cancel)


def _ensure_weights(ctx: AppContext, optional: bool = False) -> None:
    """Download the active model's weights on first use, with a progress bar.

    Args:
        optional: the command can do without them (search by image with local features):
            a failed download is a note, not an error.
    """
    if ctx.models.weights_present():
        return
    print(f"The weights for {ctx.models.model_id} are not installed; downloading them once.",
          file=sys.stderr)
    bar = DownloadBar(f"Downloading {ctx.models.model_id}")
    try:
        ctx.models.download(progress=bar)
    except ModelUnavailable as exc:
        if not optional:
            raise
        print(f"note: {exc}\nnote: going on without it: search by image works from local "
              "features, search by description needs the model.", file=sys.stderr)
    finally:
        bar.close()


def _describe(r: IndexReport) -> str:
    parts = [f"{r.added} added", f"{r.updated} updated", f"{r.moved} moved",
             f"{r.removed} removed", f"{r.failed} failed", f"{r.unchanged} unchanged"]
    if r.completed:
        # Unchanged photos given what they lacked: local features (a backfill), or the
        # vector once the model is installed.
        parts.append(f"{r.completed} completed")
    text = ", ".join(parts) + f" in {r.seconds:.1f} s"
    if r.offline_folders:
        text += "\noffline (kept as they were): " + ", ".join(map(str, r.offline_folders))
    if r.cancelled:
        text += "\ncancelled: run again to continue where it stopped"
    if r.failed:
        text += "\nsee `imagesearch status` for the reasons, `imagesearch retry` to try again"
    return text


def _search(args: argparse.Namespace, ctx: AppContext, cancel: threading.Event) -> int:
    text = " ".join(args.text)
    if not text.strip() and args.image is None:
        raise QueryError("Give a description, --image FILE, or both.")
    if args.image is not None and not args.image.is_file():
        raise QueryError(f"{args.image} is not a file.")
    weight = args.image_weight if args.image_weight is not None else ctx.settings.image_weight
    if not 0.0 <= weight <= 1.0:
        raise QueryError("--image-weight must be between 0 and 1.")
    if args.shortlist is not None and args.shortlist < 1:
        raise QueryError("--shortlist must be at least 1.")
    query = Query(text=text, image=args.image.resolve() if args.image else None,
                  image_weight=weight, top_k=args.top_k or ctx.settings.top_k,
                  folder=args.folder.resolve() if args.folder else None)
    image_only = args.image is not None and not split_negatives(text)[0]
    _ensure_weights(ctx, optional=image_only and ctx.local.mode is not None)
    uses_details = args.rerank is True or not ctx.models.weights_present() or (
        args.rerank is None and ctx.settings.rerank != "off")
    if args.image is not None and uses_details and ctx.local.missing():
        # Normally built by `index`; a library indexed by an older version, or whose index
        # file was lost, gets it now rather than a search that finds nothing.
        print("Indexing the library's photo details once before searching…", file=sys.stderr)
        _build_local_index(ctx, cancel)
    search_round = ctx.search.begin(query, rerank=args.rerank, shortlist=args.shortlist)
    hits = search_round.refine(cancel)
    print_hits([hit_json(h) for h in hits], search_round.notes, args.json)
    return 0


def _status(args: argparse.Namespace, ctx: AppContext, _cancel: threading.Event) -> int:
    st = ctx.library.status(failures=args.failures)
    if args.json:
        json.dump(_status_json(st, ctx.models.weights_present()), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    print(f"library:  {st.library_dir}")
    weights = "installed" if ctx.models.weights_present() else \
        "weights not installed (imagesearch models download)"
    print(f"model:    {st.model_id} ({weights})")
    print(f"photos:   {st.photo_count} ({st.indexed_count} indexed, {st.pending_count} pending, "
          f"{st.failed_count} failed)")
    if st.last_indexed:
        print(f"indexed:  last change {st.last_indexed.astimezone():%Y-%m-%d %H:%M}")
    if st.search_index is not None:
        print(f"index:    {st.search_index}")
    print(f"storage:  {st.storage}")
    if not st.folders:
        print("folders:  none yet; add one with `imagesearch index FOLDER`")
    for f in st.folders:
        state = "" if f.online else "  [offline]"
        print(f"  {f.path}: {f.indexed_count}/{f.photo_count} indexed, {f.failed_count} failed"
              f"{'' if f.watched else ', not watched'}{state}")
        for part in f.offline_subfolders:
            print(f"    [offline] {part.path}: {part.reason} (photos kept; "
                  f"`imagesearch remove {part.path}` forgets them)")
    if st.failures:
        print(f"failures (first {len(st.failures)} of {st.failed_count}):")
        for rec in st.failures:
            print(f"  {rec.path}: {rec.error}")
    return 0


def _status_json(st: LibraryStatus, weights: bool) -> dict[str, Any]:
    return {
        "library": str(st.library_dir), "model": st.model_id, "weights_installed": weights,
        "photos": st.photo_count, "indexed": st.indexed_count, "pending": st.pending_count,
        "failed": st.failed_count,
        "folders": [{"path": str(f.path), "photos": f.photo_count, "indexed": f.indexed_count,
                     "failed": f.failed_count, "online": f.online, "watched": f.watched,
                     "offline_subfolders": [{"path": str(p.path), "reason": p.reason}
                                            for p in f.offline_subfolders]}
                    for f in st.folders],
        "failures": [{"path": str(r.path), "reason": r.error} for r in st.failures],
        "search_index": st.search_index, "storage": st.storage,
    }


def _retry(_args: argparse.Namespace, ctx: AppContext, cancel: threading.Event) -> int:
    _ensure_weights(ctx)
    with IndexProgressBar() as bar:
        report = ctx.indexing.retry_failed(progress=bar, cancel=cancel)
    _refresh_local_index(ctx, report, cancel)
    print(_describe(report))
    return 0


def _remove(args: argparse.Namespace, ctx: AppContext, _cancel: threading.Event) -> int:
    for path in args.paths:
        n = ctx.library.remove_folder(path)
        print(f"removed {path} ({n} photos forgotten; files untouched)")
    if ctx.vectors.save_error:  # the index file is written at once: say if that failed
        print(f"warning: {ctx.vectors.save_error}", file=sys.stderr)
    return 0


def _watch(args: argparse.Namespace, ctx: AppContext, cancel: threading.Event) -> int:
    from imagesearch.services.watching import FolderWatcher

    if not ctx.library.folders():
        raise ImageSearchError("The library has no folders yet: imagesearch index FOLDER")
    _ensure_weights(ctx)
    watcher = FolderWatcher(ctx.indexing, ctx.library,
                            on_report=lambda r: print(_describe(r), flush=True))
    ctx.serve_queries()  # `imagesearch search` in another terminal asks this process
    ctx.models.preload(("textual",))  # so the first such query finds it loaded
    # Watch first, then reconcile: a change during the catch-up scan is not missed.
    watcher.start()
    try:
        with IndexProgressBar(not args.no_progress) as bar:
            report = ctx.indexing.run(progress=bar, cancel=cancel)
        print(_describe(report))
        print("watching " + ", ".join(str(p) for p in watcher.watched_paths()) +
              " (Ctrl+C to stop)", flush=True)
        while not cancel.wait(0.5):
            pass
    finally:
        watcher.stop()
    return 0


def _models(args: argparse.Namespace, ctx: AppContext, _cancel: threading.Event) -> int:
    if args.models_command == "list":
        variant = ctx.models.ames_variant()
        ames_in_use = {w.id for w in variant.weights} \
            if variant is not None and ctx.settings.rerank == "ames" else set()
        for m in ctx.models.models():
            ames = m.id in ames_in_use
            mark = "*" if m.id == ctx.models.model_id or ames else " "
            state = "installed" if m.installed else "not installed"
            print(f"{mark} {m.id:44s} {state:14s} {m.description}")
            if m.runtime:
                print(f"    runs here as {m.runtime}")
        print("\n* = active model (change with --model or the GUI settings), and the AMES "
              "checkpoints when AMES re-ranking is on\nAMES checkpoints publish no checksum: "
              "the sha256 of the first download is recorded in its manifest.json")
        return 0
    if args.models_command == "download":
        wanted = [args.model_id or ctx.models.model_id]
        if wanted == ["ames"]:
            wanted = ctx.models.ames_missing()
            if not wanted:
                print("the AMES checkpoints are installed")
        for model_id in wanted:
            bar = DownloadBar(f"Downloading {model_id}")
            try:
                path = ctx.models.download(model_id, progress=bar)
            finally:
                bar.close()
            print(f"installed {model_id} at {path}")
        return 0
    if args.models_command == "pack":
        bar = DownloadBar(f"Packing {args.pack_model}")
        try:
            packed = ctx.models.pack(args.pack_model, args.dest, progress=bar)
        finally:
            bar.close()
        print(f"wrote {args.dest} ({args.dest.stat().st_size / 2**20:.1f} MB): "
              f"{packed.model_id}, checkpoint sha256 {packed.checkpoint.sha256}\n"
              f"on the other computer: imagesearch models install {args.dest.name}")
        return 0
    bar = DownloadBar(f"Installing {args.file.name}")
    try:
        info = ctx.models.install(args.file, args.install_model, args.config, args.sha256,
                                  progress=bar)
    finally:
        bar.close()
    print(f"installed {info.id} at {info.path}")
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace, AppContext, threading.Event], int]] = {
    "index": _index, "search": _search, "status": _status, "retry": _retry,
    "remove": _remove, "watch": _watch, "models": _models, "eval": run_eval,
}
