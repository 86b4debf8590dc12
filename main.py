"""Start the imagesearch window: ``python main.py [--library DIR] [--models DIR]``."""

import sys

from imagesearch.gui.launch import main

if __name__ == "__main__":
    sys.exit(main())
