"""Product-quantised photo vectors: the compact library's catalog keeps 128 bytes a photo.

A vector of ``dim`` float dimensions is cut into ``parts`` slices; each slice is stored as
the number (one byte) of its nearest of 256 centres learned for that slice from the
library's own vectors. A 512-d vector so takes 128 bytes instead of the 1,024 of float16.
128 bytes of plain codes find more of the exact top 10 than 64 bytes even after a learned
rotation (OPQ), on the synthetic vectors of bench/ann.py: 0.68 against 0.65 (0.51 for 64
bytes unrotated), and need no rotation in the search index.
The codes are the truth once written: the float vectors they came from are gone, so the
centres are learned once per library and model and never retrained (new photos are
coded with the same centres). The search index of a compact library (core/index_family,
IVF-PQ without residuals) holds exactly these codes.

The codec's bytes: a header (magic, version, dim, parts, bits, CRC-32 of the payload),
then the centres as little-endian float32, ``parts`` x 256 x ``dim / parts``.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from imagesearch.core.native_libs import faiss_module
from imagesearch.errors import CatalogError

CODE_BYTES = 128  # a photo's vector in a compact library (README "Compact library")
BITS = 8  # one byte a slice: 256 centres each
# Centres are learned from at most this many vectors: each slice's 256 centres see 256
# points apiece, FAISS's own upper advice for k-means.
TRAIN_MAX = 65_536
# The fewest vectors worth learning centres from: 20 a centre (FAISS warns below 39).
TRAIN_MIN = 5_000

_MAGIC = b"VQ"
_VERSION = 1
_HEADER = struct.Struct("<2sBIIII")  # magic, version, dim, parts, bits, crc


@dataclass(frozen=True, slots=True)
class VectorCodec:
    """Product quantisation of unit vectors: ``centres`` is parts x 256 x (dim / parts)."""

    centres: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.centres.shape[0] * self.centres.shape[2])

    @property
    def parts(self) -> int:
        """Bytes a vector takes."""
        return int(self.centres.shape[0])

    @classmethod
    def train(cls, vectors: np.ndarray, parts: int = CODE_BYTES, seed: int = 0
              ) -> VectorCodec:
        """Centres learned from a seeded sample of ``vectors`` (at most TRAIN_MAX).

        Raises:
            ValueError: too few vectors, or ``parts`` does not divide their dimension.
        """
        n, dim = vectors.shape
        if dim % parts:
            raise ValueError(f"{parts} slices do not divide {dim} dimensions")
        if n < 2 ** BITS:
            raise ValueError(f"{n} vectors are too few to learn {2 ** BITS} centres a slice")
        rng = np.random.default_rng(seed)
        sample = vectors if n <= TRAIN_MAX else vectors[np.sort(
            rng.choice(n, TRAIN_MAX, replace=False))]
        faiss = faiss_module()
        pq = faiss.ProductQuantizer(dim, parts, BITS)
        pq.cp.seed = seed
        pq.cp.niter = 20
        pq.cp.min_points_per_centroid = 16  # from TRAIN_MIN on, without FAISS's warning
        pq.train(np.ascontiguousarray(sample, dtype=np.float32))
        centres = faiss.vector_to_array(pq.centroids).astype(np.float32)
        return cls(centres.reshape(parts, 2 ** BITS, dim // parts))

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Codes of float vectors: uint8, one row of ``parts`` bytes each."""
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"expected {self.dim}-d vectors, got {vectors.shape[1]}-d")
        if not len(vectors):
            return np.zeros((0, self.parts), np.uint8)
        codes = self._quantizer().compute_codes(vectors)
        return np.asarray(codes, dtype=np.uint8).reshape(len(vectors), self.parts)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The float32 vectors that codes stand for (each slice's centre)."""
        codes = np.asarray(codes, dtype=np.uint8)
        if codes.ndim != 2 or codes.shape[1] != self.parts:
            raise ValueError(f"expected rows of {self.parts} codes, got {codes.shape}")
        picked = self.centres[np.arange(self.parts)[None, :], codes]  # n x parts x dsub
        return np.ascontiguousarray(picked.reshape(len(codes), self.dim), dtype=np.float32)

    def _quantizer(self) -> Any:
        faiss = faiss_module()
        pq = faiss.ProductQuantizer(self.dim, self.parts, BITS)
        faiss.copy_array_to_vector(np.ascontiguousarray(self.centres.ravel()), pq.centroids)
        return pq

    # Persistence ---------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        payload = np.ascontiguousarray(self.centres, dtype="<f4").tobytes()
        return _HEADER.pack(_MAGIC, _VERSION, self.dim, self.parts, BITS,
                            zlib.crc32(payload)) + payload

    @classmethod
    def from_bytes(cls, blob: bytes) -> VectorCodec:
        """Raises:
            CatalogError: not a codec of this version, truncated or damaged.
        """
        if len(blob) < _HEADER.size:
            raise CatalogError("the stored vector codec is truncated")
        magic, version, dim, parts, bits, crc = _HEADER.unpack_from(blob)
        payload = blob[_HEADER.size:]
        if magic != _MAGIC or version != _VERSION or bits != BITS:
            raise CatalogError("the stored vector codec is of an unknown format")
        if not parts or dim % parts or len(payload) != dim * 2 ** bits * 4 \
                or zlib.crc32(payload) != crc:
            raise CatalogError("the stored vector codec is damaged")
        centres = np.frombuffer(payload, dtype="<f4").astype(np.float32)
        return cls(centres.reshape(parts, 2 ** bits, dim // parts))
