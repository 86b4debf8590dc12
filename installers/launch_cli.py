"""The frozen app's `imagesearch` command (PyInstaller needs a script, not an entry point)."""

from imagesearch.cli.main import entry

if __name__ == "__main__":
    entry()
