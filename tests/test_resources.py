"""The app's icon and desktop metadata: present in every form, and naming each other right."""

from __future__ import annotations

import configparser
import fnmatch
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from PIL import Image

from imagesearch.gui.app_icon import DESKTOP_ID, ICON_SIZES, app_icon

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "resources"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_icon_has_every_drawn_size(qapp: Any) -> None:
    icon = app_icon()
    assert sorted(s.width() for s in icon.availableSizes()) == sorted(ICON_SIZES)
    # The 16-pixel one is its own drawing, not the large one scaled down.
    small = icon.pixmap(16, 16).toImage()
    scaled = icon.pixmap(256, 256).toImage().scaled(16, 16)
    assert small != scaled


def test_every_data_file_in_the_package_is_installed() -> None:
    """A file package-data misses is absent from wheels and so from the frozen app."""
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["imagesearch"]
    package = ROOT / "imagesearch"
    data = [p.relative_to(package).as_posix() for p in package.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert any(d.startswith("gui/icons/") for d in data)
    missed = [d for d in data if not any(fnmatch.fnmatch(d, p) for p in patterns)]
    assert missed == []


def test_windows_and_macos_icons_hold_the_same_drawings() -> None:
    ico = Image.open(RESOURCES / "imagesearch.ico")
    assert sorted(ico.info["sizes"]) == [(s, s) for s in (16, 24, 32, 48, 64, 128, 256)]
    ico.size = (16, 16)
    package_16 = Image.open(ROOT / "imagesearch/gui/icons/imagesearch-16.png").convert("RGBA")
    assert ico.convert("RGBA").tobytes() == package_16.tobytes()
    icns = Image.open(RESOURCES / "imagesearch.icns")
    assert {s[0] for s in icns.info["sizes"]} == {16, 32, 64, 128, 256, 512}
    icns.size = (512, 512)
    icns.load(scale=2)  # the 1024-pixel one (512 at 2x)
    assert icns.size == (1024, 1024)


def test_desktop_entry_and_metainfo_name_the_installed_commands() -> None:
    desktop = configparser.ConfigParser(interpolation=None)
    desktop.optionxform = str  # type: ignore[assignment,method-assign]
    desktop.read(RESOURCES / f"{DESKTOP_ID}.desktop", encoding="utf-8")
    entry = desktop["Desktop Entry"]
    gui_scripts = PYPROJECT["project"]["gui-scripts"]
    assert entry["Exec"].split()[0] in gui_scripts
    assert entry["Icon"] == DESKTOP_ID

    meta = ET.parse(RESOURCES / f"{DESKTOP_ID}.metainfo.xml").getroot()
    assert meta.findtext("id") == DESKTOP_ID
    assert meta.findtext("launchable") == f"{DESKTOP_ID}.desktop"
    assert meta.findtext("project_license") == PYPROJECT["project"]["license"]["text"]
    binaries = {b.text for b in meta.iterfind("provides/binary")}
    assert binaries == set(PYPROJECT["project"]["scripts"]) | set(gui_scripts)
    assert meta.find("releases/release").get("version") == PYPROJECT["project"]["version"]
