"""Large files: real big photos are indexed, fakes fail fast, memory stays bounded."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagesearch.core import image_reading
from imagesearch.core.imaging import PreprocessSpec, decode_for_model, hash_file, open_image

pytestmark = pytest.mark.timeout(120)

SPEC = PreprocessSpec(size=64)
REPO = Path(__file__).resolve().parent.parent


def sparse(path: Path, head: bytes, size: int) -> Path:
    """A file of ``size`` bytes that starts with ``head``; the rest is a hole (no disk)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def tiff_header(width: int, height: int, rows_per_strip: int, compression: int,
                data_start: int = 1 << 16) -> tuple[bytes, int]:
    """A little-endian RGB TIFF header whose strips follow at ``data_start``.

    Returns the header and the file size the strips need.
    """
    row = width * 3
    count = -(-height // rows_per_strip)
    sizes = [min(rows_per_strip, height - i * rows_per_strip) * row for i in range(count)]
    offsets = [data_start + sum(sizes[:i]) for i in range(count)]
    tags = 10
    extra = bytearray()
    extra_at = 8 + 2 + 12 * tags + 4

    def array(fmt: str, values: list[int]) -> int:
        at = extra_at + len(extra)
        extra.extend(struct.pack(f"<{len(values)}{fmt}", *values))
        return at

    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, array("H", [8, 8, 8])),
               (259, 3, 1, compression), (262, 3, 1, 2), (273, 4, count, array("I", offsets)),
               (277, 3, 1, 3), (278, 4, 1, rows_per_strip),
               (279, 4, count, array("I", sizes)), (284, 3, 1, 1)]
    head = b"II*\x00" + struct.pack("<IH", 8, tags)
    head += b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    head += bytes(extra)
    assert len(head) < data_start
    return head, data_start + sum(sizes)


@pytest.mark.parametrize("head", [b"\x00" * 64, b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 16],
                         ids=["zeros", "video"])
def test_a_huge_file_that_is_not_an_image_fails_at_once(tmp_path: Path, head: bytes) -> None:
    fake = sparse(tmp_path / "holiday.jpg", head, 512 << 20)
    tracemalloc.start()
    started = time.perf_counter()
    decoded = decode_for_model(fake, SPEC)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert decoded.pixels is None and decoded.error is not None
    assert "not an image" in decoded.error
    assert seconds < 1.0
    assert peak < 4 << 20  # the file was not read into memory


def test_a_100_megapixel_photo_and_a_panorama_are_indexed(tmp_path: Path) -> None:
    photo = tmp_path / "big.jpg"
    Image.new("RGB", (12_000, 8_400), (200, 30, 30)).save(photo, quality=50)
    pano = tmp_path / "pano.png"
    ramp = np.tile(np.linspace(0, 255, 24_000, dtype=np.uint8), (4_000, 1))
    Image.fromarray(ramp).save(pano, compress_level=1)
    for path, size in ((photo, (12_000, 8_400)), (pano, (24_000, 4_000))):
        decoded = decode_for_model(path, SPEC)
        assert decoded.error is None, decoded.error
        assert (decoded.width, decoded.height) == size
        assert decoded.pixels is not None and decoded.pixels.shape == (64, 64, 3)
        assert decoded.content_hash == hash_file(path)


def test_a_bomb_is_refused_by_what_its_file_size_can_hold(tmp_path: Path) -> None:
    # Declares 30,000 x 30,000 pixels in a few hundred bytes: no real image is that small.
    head = tiff_header(30_000, 30_000, 4096, 5)[0]
    bomb = sparse(tmp_path / "bomb.tif", head, len(head))
    decoded = decode_for_model(bomb, SPEC)
    assert decoded.error is not None and "too large to decode safely" in decoded.error
    assert "30000x30000" in decoded.error


def test_over_the_memory_budget_and_compressed_is_refused_with_the_reason(
        tmp_path: Path) -> None:
    head, _ = tiff_header(30_000, 30_000, 64, 5)  # LZW: cannot be read a band at a time
    big = sparse(tmp_path / "scan.tif", head, 400 << 20)  # plausible size for its pixels
    decoded = decode_for_model(big, SPEC)
    assert decoded.error is not None and "MB to decode" in decoded.error
    assert decoded.error.startswith("refused")


def test_uncompressed_tiff_read_in_bands_matches_a_whole_decode(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    pixels = np.kron(base, np.ones((40, 40, 1), np.uint8))  # 1200 x 1600, smooth blocks
    path = tmp_path / "scan.tif"
    Image.fromarray(pixels).save(path, compression=None, rowsperstrip=7)
    whole, _ = open_image(path.read_bytes(), path.name, draft_size=200)
    monkeypatch.setattr(image_reading, "DECODE_BUDGET_BYTES", 1 << 20)
    monkeypatch.setattr("imagesearch.core.imaging.DECODE_BUDGET_BYTES", 1 << 20)
    with open(path, "rb") as f:
        banded, facts = open_image(f, path.name, draft_size=200)
    assert (facts.width, facts.height) == (1600, 1200)
    assert banded.width * banded.height * 4 <= 1 << 20  # within the budget
    factor = -(-1600 // banded.width)
    # Band by band, the same as shrinking the whole image at once.
    assert np.array_equal(np.asarray(banded), np.asarray(Image.fromarray(pixels).reduce(factor)))
    assert whole.size != banded.size  # the budget, not the draft size, set the scale


def test_a_gigabyte_uncompressed_tiff_decodes_in_bounded_memory(tmp_path: Path) -> None:
    head, size = tiff_header(20_000, 20_000, 64, 1)  # 1.1 GB of pixels, 1.5 GB decoded
    scan = sparse(tmp_path / "scan.tif", head, size)
    # Peak memory of this process alone: ru_maxrss would carry over the high-water mark of
    # the (large) test process it was started from, which Linux keeps across exec.
    code = (
        "import json, re, resource, sys\n"
        "from pathlib import Path\n"
        "from imagesearch.core.imaging import PreprocessSpec, decode_for_model\n"
        "d = decode_for_model(Path(sys.argv[1]), PreprocessSpec(size=224))\n"
        "try:\n"
        "    status = open('/proc/self/status').read()\n"
        "    mb = int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) // 1024\n"
        "except OSError:\n"
        "    mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 20  # macOS: bytes\n"
        "print(json.dumps([d.error, d.width, d.height, mb]))\n")
    out = subprocess.run([sys.executable, "-c", code, str(scan)], capture_output=True,
                         text=True, cwd=REPO, timeout=100, check=True).stdout
    error, width, height, rss_mb = json.loads(out)
    assert error is None and (width, height) == (20_000, 20_000)
    assert rss_mb < 600, f"{rss_mb} MB resident"


def test_the_hash_is_the_whole_files_even_past_the_image(tmp_path: Path) -> None:
    data = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 120, 200)).save(data, format="JPEG")
    motion_photo = tmp_path / "motion.jpg"  # a JPEG with a video appended, as phones write
    motion_photo.write_bytes(data.getvalue() + b"\x00\x00\x00\x18ftypmp42" + b"v" * 50_000)
    decoded = decode_for_model(motion_photo, SPEC)
    assert decoded.error is None and decoded.content_hash == hash_file(motion_photo)
