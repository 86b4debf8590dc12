"""`imagesearch`: index folders, search them, manage models, from the terminal."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from imagesearch import __version__
from imagesearch.cli.exiting import EXIT_ERROR, discard_stdout, flush_output, leave_now, reader_gone
from imagesearch.errors import ImageSearchError

if TYPE_CHECKING:
    from imagesearch.config import Settings
    from imagesearch.services.context import AppContext
    from imagesearch.services.models import ModelManager

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _model_id(text: str) -> str:
    """An ARCH/TAG argument, checked as it is parsed: a mistyped id is a usage error."""
    from imagesearch.core.model_registry import parse_model_id

    try:
        parse_model_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _model_or_group(text: str) -> str:
    """A model id, or the word `ames` (the AMES checkpoints the settings need)."""
    return text if text == "ames" else _model_id(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagesearch",
        description="Find photos in your own folders by an image or a description.")
    parser.add_argument("--version", action="version", version=f"imagesearch {__version__}")
    parser.add_argument("--library", type=Path, metavar="DIR",
                        help="library folder (catalog, index, settings); "
                             "default $IMAGESEARCH_HOME or the user data folder")
    parser.add_argument("--model", metavar="ARCH/TAG", type=_model_id,
                        help="model to use (see `models list`)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"],
                        help="where the model runs (default: auto)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("index", help="add folders to the library and index them")
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                   help="folders to add (none: re-index every library folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="decode and embed on the Ray cluster at ADDRESS (host:port, or "
                        "auto); its nodes must see the photos and models at the same paths")
    p.add_argument("--storage", choices=["standard", "compact"],
                   help="how much the library keeps of each photo, saved for the next "
                        "runs: compact keeps at most 2 KB (128-byte vector codes, fewer "
                        "details, no details index, no AMES); back to standard keeps the "
                        "vectors as approximate as their codes (README, \"Compact "
                        "library\")")
    p.add_argument("--cluster-workers", type=int, metavar="N",
                   help="workers to start on the cluster (default: one per GPU, then one "
                        "per CPU left)")

    p = sub.add_parser("search", help="search by description, by image, or both")
    p.add_argument("text", nargs="*", help='description; "-word" pushes results away from it')
    p.add_argument("--image", type=Path, metavar="FILE", help="find photos like this one")
    p.add_argument("--image-weight", type=float, default=None, metavar="W",
                   help="mix of image vs text when both are given (0..1, default 0.5)")
    p.add_argument("-k", "--top-k", type=int, default=None, metavar="N",
                   help="number of results (default from settings, 60)")
    p.add_argument("--folder", type=Path, help="only photos under this folder")
    p.add_argument("--json", action="store_true",
                   help="print a JSON array of hits (path, score, box, ...)")
    p.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None,
                   help="re-rank an image query's shortlist by matching local features "
                        "(default: the library's setting, on)")
    p.add_argument("--shortlist", type=int, default=None, metavar="N",
                   help="candidates an image query re-ranks from each source (default: "
                        "the library's settings, 100; 250 when only local features give "
                        "candidates)")

    p = sub.add_parser("status", help="library totals, folders and failures")
    p.add_argument("--failures", type=int, default=20, metavar="N",
                   help="list up to N failed photos with their reasons (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("retry", help="re-attempt every photo that failed to index")

    p = sub.add_parser("remove", help="remove folders from the library (files stay)")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")

    p = sub.add_parser("watch", help="index the library, then follow changes until Ctrl+C")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("models", help="list, download or install model weights")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    msub.add_parser("list", help="known and installed models")
    d = msub.add_parser("download", help="download a model's published weights")
    d.add_argument("model_id", nargs="?", metavar="ARCH/TAG", type=_model_or_group,
                   help="a model id, or `ames` for every checkpoint AMES re-ranking needs")
    i = msub.add_parser("install", help="install a checkpoint file or a packed model (offline)")
    i.add_argument("file", type=Path,
                   help="open_clip checkpoint (.safetensors, .bin, .pt), or an archive "
                        "written by `models pack`")
    i.add_argument("--model", dest="install_model", metavar="ARCH/TAG", type=_model_id,
                   help="the model id it belongs to (default: the configured model; an "
                        "archive names its own)")
    i.add_argument("--config", type=Path, metavar="JSON",
                   help="architecture JSON for a model open_clip does not ship")
    i.add_argument("--sha256", help="expected checksum of the file")
    k = msub.add_parser("pack", help="write an installed model to one file, for `models "
                                     "install` on a computer without internet")
    k.add_argument("pack_model", metavar="ARCH/TAG", type=_model_id,
                   help="an installed model id (see `models list`)")
    k.add_argument("dest", type=Path, metavar="FILE", help="the archive to write (a .tar)")

    from imagesearch.cli.evaluation import add_parser as add_eval_parser

    add_eval_parser(sub)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    from imagesearch.config import Settings

    settings = Settings.load(args.library, model_id=args.model, device=args.device)
    storage = getattr(args, "storage", None)
    if storage is not None and storage != settings.storage:
        # A choice for the library, kept for the app and later runs (the file gets that
        # alone: not this command's --model or --device).
        Settings.load(args.library).with_changes(storage=storage).save()
        settings = settings.with_changes(storage=storage)
    return settings


def _answered_by_running_app(args: argparse.Namespace) -> bool:
    """A search a running app (GUI or `imagesearch watch`) on this library answered."""
    if args.command != "search" or (not " ".join(args.text).strip() and args.image is None):
        return False
    from imagesearch.cli.remote import ask_running_app, print_hits

    settings = _settings(args)
    weight = _usable_weight(args, settings)
    if weight is None:
        return False
    reply = ask_running_app(args, settings.library_dir, settings.model_id, weight,
                            args.top_k or settings.top_k)
    if reply is None:
        return False
    print_hits(reply["hits"], reply.get("notes", []), args.json)
    return True


def _usable_weight(args: argparse.Namespace, settings: Settings) -> float | None:
    """The search's image weight; None when it or the shortlist is out of range, which
    the library's own search path reports."""
    weight = args.image_weight if args.image_weight is not None else settings.image_weight
    if not 0.0 <= weight <= 1.0 or (args.shortlist is not None and args.shortlist < 1):
        return None
    return float(weight)


def _answered_at_once(args: argparse.Namespace, models: ModelManager | None) -> bool:
    """A description (no image) answered from the index file and a plain read of the
    catalog, when they can answer it (services/quick_search.py)."""
    if models is None or args.command != "search" or args.image is not None:
        return False
    text = " ".join(args.text)
    if not text.strip():
        return False
    settings = _settings(args)
    weight = _usable_weight(args, settings)
    if weight is None:
        return False
    from imagesearch.cli.remote import print_hits
    from imagesearch.domain import Query
    from imagesearch.services.query_server import hit_json
    from imagesearch.services.quick_search import answer_description

    query = Query(text=text, image=None, image_weight=weight,
                  top_k=args.top_k or settings.top_k,
                  folder=args.folder.resolve() if args.folder else None)
    try:
        hits = answer_description(settings, models, query, args.shortlist)
    except BaseException:
        models.close()
        raise
    if hits is None:
        return False  # the library's own path answers, with the same model loading
    models.close()
    print_hits([hit_json(h) for h in hits], [], args.json)
    return True


def _preload(args: argparse.Namespace) -> ModelManager | None:
    """For a search, start loading the tower it needs while the rest is imported."""
    if args.command != "search":
        return None
    from imagesearch.services.models import ModelManager

    models = ModelManager(_settings(args))
    towers = (("visual",) if args.image is not None else ()) + (
        ("textual",) if any(t.strip() for t in args.text) else ())
    models.preload(towers)
    return models


def _context(args: argparse.Namespace, models: ModelManager | None = None) -> AppContext:
    from imagesearch.services.context import build_context

    settings = _settings(args)
    if args.command == "watch":
        return build_context(settings)  # long-lived: index file writes are debounced
    # One-shot: the index file is written as each command ends, and a failure is reported.
    return build_context(settings, save_delay_s=0.0, models=models, background=False)


def entry() -> None:
    """The `imagesearch` command: `main` as the process's own (cli/exiting.py)."""
    sys.exit(main(leave_when_done=True))


def main(argv: Sequence[str] | None = None, *, leave_when_done: bool = False) -> int:
    """Run one command; returns its exit code.

    Args:
        leave_when_done: the command's own process (the console command): it ends at
            once after a search, and a reader that stopped reading its output ends it
            quietly; False where the caller goes on (tests, embedding).
    """
    # In a frozen build this executable is also what the decode pool spawns: a child
    # must run its worker here, before argparse sees the arguments it was started with.
    multiprocessing.freeze_support()
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        # A Linux file name need not be UTF-8: print its bytes back as they are.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    cancel = threading.Event()

    def on_interrupt(_sig: int, _frame: FrameType | None) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        print("\nstopping after the current batch (Ctrl+C again to quit now)...",
              file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        code = _run_command(args, cancel)
    except OSError as exc:
        if not (leave_when_done and reader_gone(exc)):
            raise
        # The reader stopped reading while the output was printed (`imagesearch search
        # cat -k 500 | head -3`): no traceback; what is still buffered goes nowhere.
        discard_stdout()
        code = _when_reader_gone(args)
    finally:
        signal.signal(signal.SIGINT, previous)
    if leave_when_done:
        if args.command == "search":
            leave_now(code, _when_reader_gone(args))
        code = flush_output(code, _when_reader_gone(args))
    return code


def _when_reader_gone(args: argparse.Namespace) -> int:
    """The exit code when the output's reader has gone: none is an error for a command
    that only prints; any other command (indexing, watching) stopped short of its work."""
    prints_only = args.command in ("search", "status") or (
        args.command == "models" and getattr(args, "models_command", None) == "list")
    return 0 if prints_only else EXIT_ERROR


def _run_command(args: argparse.Namespace, cancel: threading.Event) -> int:
    try:
        if _answered_by_running_app(args):
            return 0
        models = _preload(args)
        if _answered_at_once(args, models):
            return 0
        from imagesearch.cli import commands

        return commands.run(args, lambda a: _context(a, models), cancel)
    except ImageSearchError as exc:
        print(f"imagesearch: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    entry()
