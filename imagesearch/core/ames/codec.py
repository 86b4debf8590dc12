"""The stored form of a photo's AMES descriptors: small, self-describing, checked.

Layout (little-endian): a 24-byte header (magic "AM", version, kind, count, dimension,
grid columns and rows, the original's width and height, CRC-32 of the rest), then each
descriptor's patch cell (column, row: one byte each), then the descriptors: 16-byte
binary codes ("bits"), or float16 vectors ("fp16", for the full-precision checkpoint).
With 80 binary descriptors a photo takes 24 + 80 x 18 = 1,464 bytes.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from imagesearch.core.ames.binarize import CODE_BYTES
from imagesearch.errors import FeatureDataError

_HEADER = struct.Struct("<2sBBHHHHIII")
_MAGIC = b"AM"
_VERSION = 1
KIND_BITS = 0
KIND_FP16 = 1


@dataclass(frozen=True, slots=True)
class AmesRecord:
    """A photo's stored descriptors, strongest first."""

    kind: int  # KIND_BITS or KIND_FP16
    data: np.ndarray  # N x 16 uint8 codes, or N x D float16
    cells: np.ndarray  # N x 2 uint8 (column, row)
    grid: tuple[int, int]
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.data)


def encode_record(record: AmesRecord) -> bytes:
    n = len(record.data)
    if record.kind == KIND_BITS:
        body = np.ascontiguousarray(record.data, dtype=np.uint8)
        dim = CODE_BYTES * 8
    else:
        body = np.ascontiguousarray(record.data, dtype="<f2")
        dim = int(body.shape[1]) if n else 0
    payload = np.ascontiguousarray(record.cells, dtype=np.uint8).tobytes() + body.tobytes()
    header = _HEADER.pack(_MAGIC, _VERSION, record.kind, n, dim, record.grid[0],
                          record.grid[1], record.width, record.height,
                          zlib.crc32(payload))
    return header + payload


def decode_record(blob: bytes) -> AmesRecord:
    """Raises FeatureDataError for anything but an intact record of this version."""
    if len(blob) < _HEADER.size:
        raise FeatureDataError("AMES record shorter than its header")
    magic, version, kind, n, dim, cols, rows, width, height, crc = _HEADER.unpack_from(blob)
    if magic != _MAGIC or version != _VERSION or kind not in (KIND_BITS, KIND_FP16):
        raise FeatureDataError("not an AMES record of this version")
    per = CODE_BYTES if kind == KIND_BITS else 2 * dim
    payload = blob[_HEADER.size:]
    if len(payload) != n * (2 + per) or zlib.crc32(payload) != crc:
        raise FeatureDataError("AMES record damaged (size or checksum)")
    cells = np.frombuffer(payload, np.uint8, 2 * n).reshape(n, 2)
    if n and (cols == 0 or rows == 0 or cells[:, 0].max() >= cols
              or cells[:, 1].max() >= rows):
        raise FeatureDataError("AMES record has positions outside its grid")
    if kind == KIND_BITS:
        data = np.frombuffer(payload, np.uint8, n * CODE_BYTES, 2 * n).reshape(n, CODE_BYTES)
    else:
        data = np.frombuffer(payload, "<f2", n * dim, 2 * n).reshape(n, dim)
        if not np.all(np.isfinite(data)):
            raise FeatureDataError("AMES record has non-finite values")
    return AmesRecord(kind, data, cells, (cols, rows), width, height)
