"""Regenerate the app icon's raster files from resources/imagesearch*.svg.

    apt install librsvg2-bin        # rsvg-convert
    python tools/make_icons.py

Writes the PNG sizes into the package (imagesearch/gui/icons/: the window loads them from
there, installed or frozen, and the Linux package installs them into the hicolor theme),
and resources/imagesearch.ico (Windows) and resources/imagesearch.icns (macOS).
The 16-pixel size comes from its own drawing on a 16-pixel grid: scaled down, the full
drawing's magnifier blurs into the photo.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SVG = ROOT / "resources" / "imagesearch.svg"
SVG_16 = ROOT / "resources" / "imagesearch-16.svg"
PNG_DIR = ROOT / "imagesearch" / "gui" / "icons"
PNG_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)  # 256 is the largest a .ico entry may be

# ICNS entry types holding PNG data (macOS 10.7+), by pixel size. The @2x types
# (ic11..ic14) reuse the next size up.
ICNS_TYPES = ((b"icp4", 16), (b"icp5", 32), (b"icp6", 64), (b"ic07", 128), (b"ic08", 256),
              (b"ic09", 512), (b"ic10", 1024), (b"ic11", 32), (b"ic12", 64), (b"ic13", 256),
              (b"ic14", 512))


def render(size: int) -> Image.Image:
    svg = SVG_16 if size == 16 else SVG
    png = subprocess.run(["rsvg-convert", "-w", str(size), "-h", str(size), str(svg)],
                         check=True, capture_output=True).stdout
    return Image.open(io.BytesIO(png)).convert("RGBA")


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    return out.getvalue()


def icns(images: dict[int, Image.Image]) -> bytes:
    """An ICNS container: 'icns', total length, then (type, length, PNG) entries."""
    body = b""
    for kind, size in ICNS_TYPES:
        data = png_bytes(images[size])
        body += kind + struct.pack(">I", 8 + len(data)) + data
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def main() -> int:
    if shutil.which("rsvg-convert") is None:
        print("rsvg-convert is missing: apt install librsvg2-bin", file=sys.stderr)
        return 1
    images = {size: render(size) for size in sorted({*PNG_SIZES, *ICO_SIZES, 1024})}
    PNG_DIR.mkdir(parents=True, exist_ok=True)
    for size in PNG_SIZES:
        (PNG_DIR / f"imagesearch-{size}.png").write_bytes(png_bytes(images[size]))
    largest = images[max(ICO_SIZES)]
    largest.save(ROOT / "resources" / "imagesearch.ico", format="ICO",
                 sizes=[(s, s) for s in ICO_SIZES],
                 append_images=[images[s] for s in ICO_SIZES if s != max(ICO_SIZES)])
    (ROOT / "resources" / "imagesearch.icns").write_bytes(icns(images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
