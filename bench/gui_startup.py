"""How long from `python main.py` to the main window on screen (target: under 1.5 s).

Run: ``python bench/gui_startup.py [--runs 5] [--library DIR]``. Each run is a fresh
process started the way main.py starts; the clock runs from just before the process is
created to the window's first paint, and on to the library being open (catalog read,
counts shown). Offscreen unless QT_QPA_PLATFORM says otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(library: str) -> int:
    """Start the GUI like main.py; report first paint and library-open, then quit."""
    import multiprocessing

    multiprocessing.freeze_support()
    sys.path.insert(0, str(ROOT))
    from imagesearch.gui.app import run

    def shown(window: object) -> None:
        from PySide6.QtCore import QTimer

        print("shown", flush=True)

        def poll() -> None:
            if window.library.status is not None:  # type: ignore[attr-defined]
                print("library", flush=True)
                window.close()  # type: ignore[attr-defined]
            else:
                QTimer.singleShot(5, poll)

        poll()

    return run(["--library", library], on_shown=shown)


def one_run(library: str) -> tuple[float, float]:
    env = {**os.environ}
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", library], env=env,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    marks: dict[str, float] = {}
    for line in proc.stdout:
        marks[line.strip()] = time.perf_counter() - started
    proc.wait()
    if proc.returncode != 0 or "shown" not in marks:
        raise SystemExit(f"the GUI did not start (exit {proc.returncode})")
    return marks["shown"], marks.get("library", float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--library", help="an existing library; default: a fresh temp one")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        raise SystemExit(child(args.child))
    with tempfile.TemporaryDirectory() as tmp:
        library = args.library or str(Path(tmp) / "library")
        one_run(library)  # warm the OS file cache; a cold first start is not what we track
        results = [one_run(library) for _ in range(args.runs)]
    shown = [s for s, _ in results]
    opened = [o for _, o in results]
    print(f"window shown:   median {statistics.median(shown):.3f} s "
          f"(min {min(shown):.3f}, max {max(shown):.3f}) over {args.runs} runs")
    print(f"library open:   median {statistics.median(opened):.3f} s "
          f"(min {min(opened):.3f}, max {max(opened):.3f})")


if __name__ == "__main__":
    main()
