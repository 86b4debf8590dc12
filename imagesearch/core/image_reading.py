"""Reading image files within bounds: check the header first, stream the bytes, and keep
decode memory small however large (or however fake) the declared image is.

No torch here: decode worker processes import this.
"""

from __future__ import annotations

import math
from typing import Protocol

import xxhash
from PIL import Image, ImageFile

# What a file must start with to be worth decoding, for the formats of IMAGE_EXTENSIONS.
# Checked before anything else is read, so a multi-gigabyte file of anything else (a video
# or a disk image named .jpg) fails after reading a few bytes.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"II+\x00", "TIFF"),  # BigTIFF
    (0, b"MM\x00+", "TIFF"),
)
# ISO media files are images only with one of these major brands (not mp4, mov...).
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm",
                          b"hevs", b"mif1", b"msf1", b"mif2", b"avif", b"avis", b"avio"})
HEAD_BYTES = 16

# Declared pixels are taken at their word up to this many: at most about 64 MB to decode.
BOMB_FREE_PIXELS = 1 << 24
# Beyond that, a file must hold at least one byte per this many pixels. Real images stay
# far below it (a blank page in CCITT G4, the most compressible real case, is ~80,000);
# a decompression bomb (a header declaring a vast canvas over a few bytes) is far above.
MAX_PIXELS_PER_BYTE = 100_000
MAX_PIXELS = 1 << 32  # 65,535 x 65,535, the JPEG maximum
# Decoded pixels one decode may hold. JPEGs are decoded at reduced size by the decoder;
# uncompressed TIFF strips are read a band at a time; anything else over it is refused.
DECODE_BUDGET_BYTES = 1 << 30
# pillow-heif reads a whole HEIF/AVIF file into memory before decoding it.
MAX_HEIF_BYTES = 512 << 20
# Bytes per pixel as Pillow stores each mode (multi-band modes take four).
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}

# Modes Image.reduce() does not take; huge ones are sampled to nearest pixels instead.
_NO_REDUCE = frozenset({"1", "P", "I;16", "I;16L", "I;16B", "I;16N"})
_NEAREST_FROM = 64 << 20

_pillow_ready = False


class Readable(Protocol):
    """What decoding needs of a file: sequential reads and seeks."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readline(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...


def sniff_format(head: bytes) -> str | None:
    """The format a file's first bytes announce, or None if none we read."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        return "HEIF" if head[8:12] in _HEIF_BRANDS else None
    for offset, magic, name in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return name
    return None


def prepare_pillow() -> None:
    """Replace Pillow's fixed 89-megapixel guard with the checks below.

    That guard refuses real 100-megapixel photos and stitched panoramas; the size-based
    check and the decode budget here refuse bombs instead, and bound memory either way.
    """
    global _pillow_ready
    if not _pillow_ready:
        Image.MAX_IMAGE_PIXELS = None
        _pillow_ready = True


def check_declared_size(width: int, height: int, file_size: int | None) -> None:
    """Refuse sizes no real file of ``file_size`` bytes can hold.

    Raises:
        ValueError: with the reason.
    """
    pixels = width * height
    if pixels > MAX_PIXELS or (
            file_size is not None and pixels > BOMB_FREE_PIXELS
            and pixels > max(file_size, 1) * MAX_PIXELS_PER_BYTE):
        held = f" in {file_size:,} bytes" if file_size is not None else ""
        raise ValueError(f"refused: declares {width}x{height} pixels{held}, too large to "
                         "decode safely (a decompression bomb)")


def check_heif_size(file_size: int | None) -> None:
    if file_size is not None and file_size > MAX_HEIF_BYTES:
        raise ValueError(f"refused: a HEIF/AVIF file of {file_size >> 20} MB is far larger "
                         "than a photo; its decoder would read it into memory whole")


def stored_bytes(img: Image.Image) -> int:
    """Memory the decoded pixels of ``img`` (at its current, maybe drafted, size) take."""
    return img.width * img.height * _STORED_BYTES.get(img.mode, 4)


def reduce_factor(width: int, height: int, target: int | None, long_side: int = 0) -> int:
    """Integer shrink that keeps the short side at least twice ``target`` and the long side
    at least ``long_side`` (1: none)."""
    if target is None:
        return 1
    factor = min(width, height) // (2 * target)
    if long_side:
        factor = min(factor, max(width, height) // long_side)
    return max(1, factor)


def shrink(img: Image.Image, target: int | None, long_side: int = 0) -> Image.Image:
    """A large decoded image shrunk by an integer factor before anything copies it."""
    factor = reduce_factor(img.width, img.height, target, long_side)
    if factor == 1:
        return img
    if img.mode in _NO_REDUCE:
        if stored_bytes(img) < _NEAREST_FROM:
            return img  # small enough to convert whole, which samples it better
        return img.resize((max(1, img.width // factor), max(1, img.height // factor)),
                          Image.Resampling.NEAREST)
    return img.reduce(factor)  # a box filter: every pixel counts


def raw_strips(img: Image.Image) -> list[tuple[int, int, int, str]] | None:
    """(first row, end row, file offset, raw mode) of each strip of an uncompressed,
    strip-organised TIFF, top to bottom; None for anything else."""
    if img.format != "TIFF" or not isinstance(img, ImageFile.ImageFile) or not img.tile:
        return None
    if getattr(img, "_planar_configuration", 1) != 1:
        return None
    strips = []
    for codec, extents, offset, args in img.tile:
        if codec != "raw" or extents is None or not isinstance(args, tuple):
            return None
        x0, y0, x1, y1 = extents
        if x0 != 0 or x1 != img.width or args[1] != 0 or not isinstance(args[0], str):
            return None
        strips.append((y0, y1, offset, args[0]))
    return sorted(strips)


def load_in_bands(img: Image.Image, strips: list[tuple[int, int, int, str]], fp: Readable,
                  target: int | None) -> Image.Image:
    """Decode an uncompressed TIFF a band of rows at a time, shrinking each band.

    Memory stays at one band plus the shrunk result, whatever the image's full size.
    """
    bits = getattr(img, "tag_v2", {}).get(258, (8,))
    row_bytes = math.ceil(img.width * sum(bits if isinstance(bits, tuple) else (bits,)) / 8)
    factor = max(reduce_factor(img.width, img.height, target),
                 math.ceil(math.sqrt(stored_bytes(img) / (DECODE_BUDGET_BYTES / 4))))
    band_rows = factor * max(1, (32 << 20) // (row_bytes * factor))  # ~32 MB a band
    out = Image.new(img.mode, (math.ceil(img.width / factor), math.ceil(img.height / factor)))
    pending: list[bytes] = []
    rows = y_out = 0
    for index, (y0, y1, offset, rawmode) in enumerate(strips):
        fp.seek(offset)
        data = fp.read(row_bytes * (y1 - y0))
        if len(data) < row_bytes * (y1 - y0):
            raise ValueError("a strip ends before its rows do")
        pending.append(data)
        rows += y1 - y0
        last = index == len(strips) - 1
        while rows >= band_rows or (last and rows):
            take = min(rows, band_rows)
            joined = b"".join(pending)
            band = Image.frombytes(img.mode, (img.width, take), joined[:take * row_bytes],
                                   "raw", rawmode)
            rest = joined[take * row_bytes:]
            pending, rows = ([rest] if rest else []), rows - take
            small = band.reduce(factor)
            out.paste(small, (0, y_out))
            y_out += small.height
    return out


class HashingReader:
    """A read-only file that hashes its bytes as the decoder reads them.

    Decoders mostly read front to back, so the file is usually read once for both the
    decode and the content hash; ``digest()`` reads whatever the decoder skipped.
    """

    def __init__(self, f: Readable) -> None:
        self._f = f
        self._hash = xxhash.xxh3_128()
        self._hashed = 0  # bytes [0, _hashed) are in the hash

    def read(self, size: int = -1, /) -> bytes:
        start = self._f.tell()
        return self._hashed_from(start, self._f.read(size))

    def readline(self, size: int = -1, /) -> bytes:
        start = self._f.tell()
        return self._hashed_from(start, self._f.readline(size))

    def _hashed_from(self, start: int, data: bytes) -> bytes:
        if start <= self._hashed < start + len(data):
            self._hash.update(memoryview(data)[self._hashed - start:])
            self._hashed = start + len(data)
        return data

    def seek(self, offset: int, whence: int = 0, /) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def digest(self) -> str:
        """The whole file's xxh3-128, reading only what has not been hashed yet."""
        self._f.seek(self._hashed)
        while chunk := self._f.read(1 << 20):
            self._hash.update(chunk)
            self._hashed += len(chunk)
        return self._hash.hexdigest()
