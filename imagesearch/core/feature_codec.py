"""Stored local features: a few bytes a keypoint, checked on the way back.

A record is a small header, one code per descriptor and one 32-bit word of geometry per
keypoint. Two codecs (codebooks shipped in core/data and never retrained: the stored codes
depend on them):

    rq5    residual quantisation, 5 bytes: five 256-word codebooks of the whole 128
           dimensions, each coding what the previous ones left (beam search, FAISS)
    pq16   product quantisation, 16 bytes: 16 slices of 8 dimensions, 256 words each

Five bytes of residual codes reconstruct RootSIFT nearly as well as eight of product
codes (tools/train_feature_codebooks.py prints both errors on its training descriptors),
so the compact mode keeps 225 keypoints within 2 KB where it kept 160: on the
instance benchmark the extra keypoints are worth far more than the small loss per
descriptor. Geometry:

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagesearch.core.local_features import LocalFeatures, empty_features
from imagesearch.core.native_libs import guard_openmp
from imagesearch.errors import FeatureDataError, InstallationError

CODEBOOK_DIR = Path(__file__).with_name("data")


@dataclass(frozen=True, slots=True)
class Codec:
    """How a descriptor is stored: ``parts`` codes of one byte each."""

    name: str
    ident: int  # the record header's codec byte
    kind: str  # "pq" or "rq"
    parts: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.parts, 256, 128 // self.parts if self.kind == "pq" else 128)


CODECS = {c.name: c for c in (Codec("pq16", 16, "pq", 16), Codec("rq5", 0x85, "rq", 5))}
_BY_IDENT = {c.ident: c for c in CODECS.values()}
# The committed codebooks (tools/train_feature_codebooks.py). Stored codes are only
# meaningful with exactly these; a test compares the files against them.
CODEBOOK_SHA256 = {
    "pq16": "2b9ddd5267daa0125fdb04a31813c97e7fd52af5cbc4250e90b76f048618a6b7",
    "rq5": "248e3a434622b8227a2755a81fbcbdfcfeb026d47cb8ed30f7fc15b757cb1387",
}
_RQ_BEAM = 8  # candidate encodings kept per step of the residual search

_MAGIC = b"LF"
_VERSION = 1
_HEADER = struct.Struct("<2sBBIIII")  # magic, version, codec, count, w, h, crc
_SCALE_MIN, _SCALE_MAX = -12.0, 0.0


def codebook_file(codec: str) -> Path:
    return CODEBOOK_DIR / f"rootsift_{codec}.npy"


def _codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown descriptor codec {name!r}") from None


@functools.lru_cache(maxsize=4)
def _codebook(name: str) -> np.ndarray:
    codec = _codec(name)
    path = codebook_file(name)
    # Not FeatureDataError: that marks one photo's record as damaged (and so dropped);
    # a broken codebook would make every record look damaged.
    try:
        centroids = np.load(path)
    except (OSError, ValueError) as exc:
        raise InstallationError(
            f"the feature codebook {path} cannot be read ({exc}); reinstall imagesearch"
        ) from exc
    if centroids.shape != codec.shape:
        raise InstallationError(f"the feature codebook {path} has shape {centroids.shape}; "
                                "reinstall imagesearch")
    return np.ascontiguousarray(centroids, dtype=np.float32)


@functools.lru_cache(maxsize=2)
def _residual_quantizer(name: str) -> Any:
    """FAISS's residual quantiser over the shipped codebooks (encoding only)."""
    book = _codebook(name)
    guard_openmp()
    try:
        import faiss

        rq = faiss.ResidualQuantizer(128, len(book), 8)
        faiss.copy_array_to_vector(book.ravel(), rq.codebooks)
        rq.is_trained = True
        rq.max_beam_size = _RQ_BEAM
        # The same codes from tables of codebook cross-products, 2.5x faster: 3.6 against
        # 8.8 ms a photo of 225 descriptors on one thread (bench/sift_extract.py).
        rq.use_beam_LUT = 1
        rq.compute_codebook_tables()  # type: ignore[attr-defined]
    except Exception as exc:  # ImportError, or a FAISS too old for residual codes
        raise InstallationError(f"FAISS cannot encode photo details ({exc}); "
                                "reinstall imagesearch") from exc
    return rq


def codebook_digest(name: str) -> str:
    return hashlib.sha256(codebook_file(name).read_bytes()).hexdigest()


def quantize(descriptors: np.ndarray, codec: str) -> np.ndarray:
    """N x 128 float32 to N x parts uint8 codes."""
    c = _codec(codec)
    if c.kind == "rq":
        if not len(descriptors):
            return np.zeros((0, c.parts), np.uint8)
        codes: np.ndarray = _residual_quantizer(codec).compute_codes(
            np.ascontiguousarray(descriptors, dtype=np.float32))
        return codes
    book = _codebook(codec)
    n = len(descriptors)
    parts = descriptors.reshape(n, c.parts, -1).transpose(1, 0, 2)  # M x N x d
    # |x - c|^2 = |c|^2 - 2 x.c (+ |x|^2, the same for every c)
    cross = np.matmul(parts, book.transpose(0, 2, 1))  # M x N x 256
    dist = (book * book).sum(axis=2)[:, None, :] - 2.0 * cross
    return np.ascontiguousarray(dist.argmin(axis=2).T.astype(np.uint8))


def reconstruct(codes: np.ndarray, codec: str) -> np.ndarray:
    """N x parts uint8 codes to N x 128 float32, L2-normalised again."""
    c = _codec(codec)
    book = _codebook(codec)
    n = len(codes)
    if c.kind == "rq":  # one word of each codebook, summed in place
        out = book[0][codes[:, 0]]
        for part in range(1, c.parts):
            out += book[part][codes[:, part]]
    else:
        out = book[np.arange(c.parts)[None, :], codes.astype(np.intp)].reshape(n, 128)
    out /= np.maximum(np.sqrt(np.einsum("ij,ij->i", out, out)), 1e-9)[:, None]
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


def encode_features(features: LocalFeatures, codec: str) -> bytes:
    """The stored form of ``features`` (see the module docstring).

    Raises:
        InstallationError: the codec's codebook or FAISS is broken (checked even for a
            photo without keypoints, so none is stored as featureless for that reason).
    """
    c = _codec(codec)
    if c.kind == "rq":
        _residual_quantizer(codec)
    else:
        _codebook(codec)
    codes = quantize(features.descriptors, codec) if len(features) \
        else np.zeros((0, c.parts), np.uint8)
    payload = codes.tobytes() + _pack_geometry(features).astype("<u4").tobytes()
    header = _HEADER.pack(_MAGIC, _VERSION, c.ident, len(features),
                          features.width, features.height, zlib.crc32(payload))
    return header + payload


def decode_features(blob: bytes) -> LocalFeatures:
    """Features back from their stored form, descriptors reconstructed.

    Raises:
        FeatureDataError: the record is damaged or of an unknown layout.
    """
    if len(blob) < _HEADER.size:
        raise FeatureDataError("local-feature record too short")
    magic, version, ident, count, width, height, crc = _HEADER.unpack_from(blob)
    codec = _BY_IDENT.get(ident)
    if magic != _MAGIC or version != _VERSION or codec is None:
        raise FeatureDataError("local-feature record of an unknown layout")
    payload = memoryview(blob)[_HEADER.size:]
    m = codec.parts
    if len(payload) != count * (m + 4) or zlib.crc32(payload) != crc:
        raise FeatureDataError("local-feature record is damaged (checksum mismatch)")
    if count == 0:
        return empty_features(width, height)
    codes = np.frombuffer(payload[:count * m], dtype=np.uint8).reshape(count, m)
    words = np.frombuffer(payload[count * m:], dtype="<u4")
    xy, scale, angle = _unpack_geometry(words, width, height)
    return LocalFeatures(reconstruct(codes, codec.name), xy, scale, angle, width, height)


def record_size(count: int, codec: str) -> int:
    """Bytes a record of ``count`` keypoints takes."""
    return _HEADER.size + count * (_codec(codec).parts + 4)
