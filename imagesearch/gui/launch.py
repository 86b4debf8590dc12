"""Starting the desktop app: what must happen before Qt is loaded.

``main.py`` and the ``imagesearch-gui`` command both start here.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Sequence

from imagesearch.gui.platform_check import EXIT_NO_WINDOW, explain_import_error


def main(argv: Sequence[str] | None = None) -> int:
    # Decode workers are spawned processes: a frozen build must handle being one first.
    multiprocessing.freeze_support()
    try:
        from imagesearch.gui.app import run
    except ImportError as exc:  # Qt's own system libraries are missing
        message = explain_import_error(exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return EXIT_NO_WINDOW
    return run(sys.argv[1:] if argv is None else argv)
