"""The frozen app's `imagesearch` command (PyInstaller needs a script, not an entry point)."""

import sys

from imagesearch.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
