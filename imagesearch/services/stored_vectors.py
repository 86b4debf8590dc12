"""The catalog's photo vectors for one model, whichever way they are stored.

A standard library keeps float16 vectors; a compact one (``"storage": "compact"``), once
it holds enough photos to learn from, keeps 128-byte product codes (core/vector_codec.py)
and the codec beside them. Everything that reads vectors back (the index's rebuilds and
checks, "more like this", evaluation) reads them here, as float32: the codes are
decoded to the vectors they stand for, which is exactly what the search index holds.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from imagesearch.core.vector_codec import CODE_BYTES, TRAIN_MAX, TRAIN_MIN, VectorCodec
from imagesearch.errors import CatalogError

if TYPE_CHECKING:
    from imagesearch.storage.catalog import Catalog

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class StoredVectors:
    """Reads (and codes for storing) one model's vectors. Thread-safe."""

    def __init__(self, catalog: Catalog, model_id: str) -> None:
        self.catalog = catalog
        self.model_id = model_id
        self._lock = threading.Lock()
        self._digest: str | None = None  # of the codec parsed last
        self._codec: VectorCodec | None = None

    def codec(self) -> VectorCodec | None:
        """The model's codec when its vectors are product codes (read on each call: a
        compression or its undoing by any process shows at once: its digest is read,
        and the codec itself only when that changed).

        Raises:
            CatalogError: the stored codec is damaged (its codes mean nothing now).
        """
        digest = self.catalog.vector_codec_digest(self.model_id)
        if digest is None:
            return None
        with self._lock:
            if self._digest == digest:
                return self._codec
        stored = self.catalog.vector_codec(self.model_id)
        if stored is None:
            return None  # made standard meanwhile
        try:
            parsed = VectorCodec.from_bytes(stored[1])
        except CatalogError as exc:
            raise CatalogError(
                f"{exc} (model {self.model_id}): set Settings → Library storage to "
                "Standard, or run `imagesearch index --storage standard`, to forget the "
                "codes and embed the photos again") from exc
        with self._lock:
            self._codec, self._digest = parsed, stored[2]
            return parsed

    def _read(self, read: Callable[[VectorCodec | None], _T]) -> _T:
        """``read(codec)`` of rows made with that very codec (or float16 with none): tried
        again when another process coded the library, or made it standard, in between."""
        for _ in range(3):
            digest = self.catalog.vector_codec_digest(self.model_id)
            codec = self.codec()
            try:
                result = read(codec)
            except (ValueError, KeyError):
                if self.catalog.vector_codec_digest(self.model_id) == digest:
                    raise
                continue
            if self.catalog.vector_codec_digest(self.model_id) == digest:
                return result
        raise CatalogError(f"the vectors of {self.model_id} keep changing kind")

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids ascending, float32 vectors) of every photo with one."""
        def read(codec: VectorCodec | None) -> tuple[np.ndarray, np.ndarray]:
            if codec is None:
                return self.catalog.vectors(self.model_id)
            ids, codes = self.catalog.vectors(self.model_id, codec.parts)
            return ids, decoded(codec, codes)
        return self._read(read)

    def of(self, ids: np.ndarray) -> np.ndarray:
        """float32 vectors of ``ids`` (each must have one), in that order."""
        def read(codec: VectorCodec | None) -> np.ndarray:
            if codec is None:
                return self.catalog.vectors_of(self.model_id, ids)
            return decoded(codec, self.catalog.vectors_of(self.model_id, ids, codec.parts))
        return self._read(read)

    def one(self, photo_id: int) -> np.ndarray | None:
        def read(codec: VectorCodec | None) -> np.ndarray | None:
            if codec is None:
                return self.catalog.vector(photo_id, self.model_id)
            codes = self.catalog.vector(photo_id, self.model_id, codec.parts)
            return None if codes is None else codec.decode(codes[None])[0]
        return self._read(read)

    def expand(self) -> int:
        """Make the vectors float16 again (of what their codes stand for: as approximate
        as before; nothing is lost) and forget the codec, in one transaction. A damaged
        codec's codes mean nothing: they are forgotten and their photos embedded again.
        Returns how many vectors changed."""
        try:
            codec = self.codec()
        except CatalogError as exc:
            log.warning("%s; forgetting the coded vectors", exc)
            return self.catalog.drop_coded_vectors(self.model_id)
        if codec is None:
            return 0
        return self.catalog.expand_vectors(self.model_id, codec.parts, codec.decode)

    def compress(self) -> bool:
        """Learn a codec from the stored vectors and code them all in place (one
        transaction). False when there are too few to learn from or a codec exists."""
        codec = self.learn()
        return codec is not None and self.code_with(codec)

    def learn(self) -> VectorCodec | None:
        """A codec learned from a sample of the stored vectors (seconds; it takes no
        lock), or None when there are too few or the vectors are coded already."""
        if self.codec() is not None:
            return None
        ids = self.catalog.vector_ids(self.model_id)
        if len(ids) < TRAIN_MIN:
            return None
        # A seeded sample is all the training reads (a million float vectors would be 2 GB).
        rng = np.random.default_rng(0)
        sample = ids if len(ids) <= TRAIN_MAX else np.sort(
            rng.choice(ids, TRAIN_MAX, replace=False))
        try:
            vectors = self.catalog.vectors_of(self.model_id, sample)
        except KeyError:  # a photo removed meanwhile: the next run learns them
            return None
        # 128 slices for every real model's width (512, 768, 1024...); fewer for a width
        # that 128 does not divide.
        return VectorCodec.train(vectors, math.gcd(vectors.shape[1], CODE_BYTES))

    def code_with(self, codec: VectorCodec) -> bool:
        """Code every stored vector with ``codec`` and keep it, in one transaction (call
        under the write lane). False when another codec got there first."""
        coded = self.catalog.compress_vectors(self.model_id, codec.to_bytes(), codec.parts,
                                              codec.encode)
        if coded:
            log.info("the vectors of %s are now %d-byte product codes (%d coded)",
                     self.model_id, codec.parts, coded)
        return coded > 0


def decoded(codec: VectorCodec, codes: np.ndarray) -> np.ndarray:
    """float32 vectors of rows of ``codec``'s codes (none: an empty array of its width)."""
    if not len(codes):
        return np.zeros((0, codec.dim), np.float32)
    return codec.decode(codes)
