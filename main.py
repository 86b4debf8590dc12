"""Start the imagesearch window: ``python main.py [--library DIR] [--models DIR]``."""

import multiprocessing
import sys


def main() -> int:
    # Decode workers are spawned processes; a frozen build needs this before anything else.
    multiprocessing.freeze_support()
    from imagesearch.gui.app import run

    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
