"""Stored local features: a few bytes a keypoint, checked on the way back.

A record is a small header, one product-quantisation code per descriptor (8 or 16 bytes,
codebooks shipped in core/data and never retrained: the stored codes depend on them) and
one 32-bit word of geometry per keypoint:

    x: 10 bits, y: 10 bits   position as a fraction of the upright width and height
    scale: 6 bits            log2 of the diameter over the longer side, -12..0
    angle: 6 bits            5.6 degree steps

Little-endian throughout; a CRC-32 over the payload catches a damaged record, which the
caller then recomputes.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np

from imagesearch.core.local_features import LocalFeatures, empty_features
from imagesearch.errors import FeatureDataError, InstallationError

CODEBOOK_DIR = Path(__file__).with_name("data")
# The committed codebooks (tools/train_feature_codebooks.py). Stored codes are only
# meaningful with exactly these; a test compares the files against them.
CODEBOOK_SHA256 = {
    8: "d8c3473bd9a5c150c48f0f1d60de29a750a962df7dd14f7081d7328b7eb9622e",
    16: "2b9ddd5267daa0125fdb04a31813c97e7fd52af5cbc4250e90b76f048618a6b7",
}

_MAGIC = b"LF"
_VERSION = 1
_HEADER = struct.Struct("<2sBBIIII")  # magic, version, subquantizers, count, w, h, crc
_SCALE_MIN, _SCALE_MAX = -12.0, 0.0


def codebook_file(subquantizers: int) -> Path:
    return CODEBOOK_DIR / f"rootsift_pq{subquantizers}.npy"


@functools.lru_cache(maxsize=4)
def _codebook(subquantizers: int) -> np.ndarray:
    path = codebook_file(subquantizers)
    # Not FeatureDataError: that marks one photo's record as damaged (and so dropped);
    # a broken codebook would make every record look damaged.
    try:
        centroids = np.load(path)
    except (OSError, ValueError) as exc:
        raise InstallationError(
            f"the feature codebook {path} cannot be read ({exc}); reinstall imagesearch"
        ) from exc
    if centroids.shape != (subquantizers, 256, 128 // subquantizers):
        raise InstallationError(f"the feature codebook {path} has shape {centroids.shape}; "
                                "reinstall imagesearch")
    return np.ascontiguousarray(centroids, dtype=np.float32)


def codebook_digest(subquantizers: int) -> str:
    return hashlib.sha256(codebook_file(subquantizers).read_bytes()).hexdigest()


def pq_encode(descriptors: np.ndarray, subquantizers: int) -> np.ndarray:
    """N x 128 float32 to N x M uint8: the nearest centroid in each 128/M-dim slice."""
    book = _codebook(subquantizers)
    n = len(descriptors)
    parts = descriptors.reshape(n, subquantizers, -1).transpose(1, 0, 2)  # M x N x d
    # |x - c|^2 = |c|^2 - 2 x.c (+ |x|^2, the same for every c)
    cross = np.matmul(parts, book.transpose(0, 2, 1))  # M x N x 256
    dist = (book * book).sum(axis=2)[:, None, :] - 2.0 * cross
    codes: np.ndarray = np.ascontiguousarray(dist.argmin(axis=2).T.astype(np.uint8))
    return codes


def pq_decode(codes: np.ndarray, subquantizers: int) -> np.ndarray:
    """N x M uint8 to N x 128 float32, L2-normalised again."""
    book = _codebook(subquantizers)
    n = len(codes)
    out = book[np.arange(subquantizers)[None, :], codes.astype(np.intp)]  # N x M x d
    out = out.reshape(n, 128)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
    return np.ascontiguousarray(out, dtype=np.float32)


def _pack_geometry(f: LocalFeatures) -> np.ndarray:
    w, h = max(f.width, 1), max(f.height, 1)
    x = np.clip(np.round(f.xy[:, 0] / w * 1023), 0, 1023).astype(np.uint32)
    y = np.clip(np.round(f.xy[:, 1] / h * 1023), 0, 1023).astype(np.uint32)
    rel = np.log2(np.maximum(f.scale, 1e-6) / max(w, h))
    s = np.clip(np.round((rel - _SCALE_MIN) / (_SCALE_MAX - _SCALE_MIN) * 63), 0, 63)
    a = np.round(np.mod(f.angle, 360.0) / 360.0 * 64).astype(np.uint32) % 64
    packed: np.ndarray = (x << 22) | (y << 12) | (s.astype(np.uint32) << 6) | a
    return packed


def _unpack_geometry(words: np.ndarray, width: int, height: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w, h = max(width, 1), max(height, 1)
    x = ((words >> 22) & 1023).astype(np.float32) / 1023 * w
    y = ((words >> 12) & 1023).astype(np.float32) / 1023 * h
    s = ((words >> 6) & 63).astype(np.float32) / 63 * (_SCALE_MAX - _SCALE_MIN) + _SCALE_MIN
    scale = (np.exp2(s) * max(w, h)).astype(np.float32)
    angle = ((words & 63).astype(np.float32) * (360.0 / 64)).astype(np.float32)
    return np.stack([x, y], axis=1), scale, angle


def encode_features(features: LocalFeatures, subquantizers: int) -> bytes:
    """The stored form of ``features`` (see the module docstring)."""
    codes = pq_encode(features.descriptors, subquantizers) if len(features) \
        else np.zeros((0, subquantizers), np.uint8)
    payload = codes.tobytes() + _pack_geometry(features).astype("<u4").tobytes()
    header = _HEADER.pack(_MAGIC, _VERSION, subquantizers, len(features),
                          features.width, features.height, zlib.crc32(payload))
    return header + payload


def decode_features(blob: bytes) -> LocalFeatures:
    """Features back from their stored form, descriptors reconstructed.

    Raises:
        FeatureDataError: the record is damaged or of an unknown layout.
    """
    if len(blob) < _HEADER.size:
        raise FeatureDataError("local-feature record too short")
    magic, version, m, count, width, height, crc = _HEADER.unpack_from(blob)
    if magic != _MAGIC or version != _VERSION or m not in CODEBOOK_SHA256:
        raise FeatureDataError("local-feature record of an unknown layout")
    payload = memoryview(blob)[_HEADER.size:]
    if len(payload) != count * (m + 4) or zlib.crc32(payload) != crc:
        raise FeatureDataError("local-feature record is damaged (checksum mismatch)")
    if count == 0:
        return empty_features(width, height)
    codes = np.frombuffer(payload[:count * m], dtype=np.uint8).reshape(count, m)
    words = np.frombuffer(payload[count * m:], dtype="<u4")
    xy, scale, angle = _unpack_geometry(words, width, height)
    return LocalFeatures(pq_decode(codes, m), xy, scale, angle, width, height)


def record_size(count: int, subquantizers: int) -> int:
    """Bytes a record of ``count`` keypoints takes."""
    return _HEADER.size + count * (subquantizers + 4)
