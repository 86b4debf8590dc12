"""The FAISS inner-product index over photo ids, in the family that suits the library.

The file is a cache of the catalog's vectors: it records the catalog generation and
model it reflects, so a mismatch is detected on open and answered with a rebuild.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from imagesearch.core.index_family import FLAT, IVF_SQ8
from imagesearch.core.index_file import (
    Change,
    IndexHeader,
    delta_path,
    pack_index,
    read_changes,
    unpack_index,
    write_index_file,
)
from imagesearch.core.native_libs import faiss_module
from imagesearch.errors import IndexFileError

# When at least DRIFT_MIN_ADDED vectors added since training read back from their 8-bit
# codes DRIFT_FACTOR times worse, on average, than the training vectors did, the library
# has moved away from what the lists learned and they are retrained. Vectors like the
# training ones come out near 1x; a new kind of photo (other clusters) 100-260x here.
DRIFT_FACTOR = 10.0
DRIFT_MIN_ADDED = 1000


class VectorIndex:
    """Inner-product search keyed by catalog photo id: exact (IDMap2 over Flat), or
    IVF-SQ8 with a calibrated probe count (core/index_family.py).

    Thread-safe: every read and write of the FAISS object takes one lock.
    """

    def __init__(self, dim: int, model_id: str, generation: int = 0,
                 index: Any | None = None, family: str = FLAT, nprobe: int = 0,
                 trained_on: int = 0) -> None:
        faiss = _faiss()
        self.dim = dim
        self.model_id = model_id
        self.generation = generation
        self.family = family
        self.nprobe = nprobe
        self.trained_on = trained_on
        self.recall = 0.0  # recall@10 the calibration measured (IVF families)
        self.coding_error = 0.0  # mean 1 - cosine of training vectors read back (IVF)
        self.added_since_training = 0  # this process's additions (IVF families)...
        self.added_error = 0.0  # ...and the sum of their 1 - cosine read back
        self.refused_at = 0  # size at which new lists missed the recall target (this process)
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._lock = threading.RLock()

    @classmethod
    def from_trained(cls, trained: Any, ids: np.ndarray, vectors: np.ndarray, model_id: str,
                     generation: int, nprobe: int, trained_on: int) -> VectorIndex:
        """An IVF-SQ8 index around ``trained`` (core/index_family.py), filled with ``ids``."""
        if len(np.unique(ids)) != len(ids):
            raise ValueError("an index is built from distinct ids")
        for start in range(0, len(ids), 65536):  # float32 copies of a slice at a time
            trained.add_with_ids(
                np.ascontiguousarray(vectors[start:start + 65536], dtype=np.float32),
                np.ascontiguousarray(ids[start:start + 65536], dtype=np.int64))
        index = cls(int(trained.d), model_id, generation, trained, IVF_SQ8, nprobe,
                    trained_on)
        sample = np.ascontiguousarray(vectors[:2000], dtype=np.float32)
        index.coding_error = float(np.mean(1.0 - row_cosines(index.requantized(sample), sample)))
        return index

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, dim: int, model_id: str,
              generation: int) -> VectorIndex:
        index = cls(dim, model_id, generation)
        if len(ids):
            index.add(ids, vectors)
        return index

    def __len__(self) -> int:
        with self._lock:
            return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        faiss = _faiss()
        with self._lock:
            if self.family == FLAT:
                return np.asarray(faiss.vector_to_array(self._index.id_map), dtype=np.int64)
            lists = self._index.invlists
            parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                     for i in range(lists.nlist) if lists.list_size(i)]
            return (np.concatenate(parts).astype(np.int64) if parts
                    else np.zeros(0, np.int64))

    def apply(self, change: Change) -> None:
        """Replay one commit: its removals, then its additions (one removal pass: an
        exact index's costs a pass over all of it)."""
        ids, vectors = self._checked(change.added, change.vectors)
        with self._lock:
            self._remove(np.union1d(np.asarray(change.removed, dtype=np.int64), ids))
            self._add_new(ids, vectors)
            self.generation = change.after

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace vectors for ``ids``."""
        ids, vectors = self._checked(ids, vectors)
        with self._lock:
            self._remove(ids)
            self._add_new(ids, vectors)

    def _checked(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(ids) == 0:
            return ids, np.zeros((0, self.dim), np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(ids):
            raise ValueError(f"expected {len(ids)}x{self.dim} vectors, got {vectors.shape}")
        if len(np.unique(ids)) != len(ids):  # one id twice: the last vector wins
            last = len(ids) - 1 - np.unique(ids[::-1], return_index=True)[1]
            ids, vectors = ids[last], vectors[last]
        return ids, vectors

    def _add_new(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not len(ids):
            return
        self._index.add_with_ids(vectors, ids)
        if self.family != FLAT:
            # Vectors unlike those the lists were trained on come back distorted (8-bit
            # ranges clip them): counted, so the index is retrained when many are.
            back = self._index.sa_decode(self._index.sa_encode(vectors))
            self.added_since_training += len(ids)
            self.added_error += float(np.sum(1.0 - row_cosines(back, vectors)))

    def requantized(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors`` as this index would store them (exact: unchanged)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.family == FLAT or not len(vectors):
            return vectors
        with self._lock:
            return np.asarray(self._index.sa_decode(self._index.sa_encode(vectors)))

    @property
    def drifted(self) -> bool:
        """Many vectors added since training are coded poorly: the library's content has
        moved away from what the lists learned, and recall with it."""
        if self.family == FLAT or self.added_since_training < DRIFT_MIN_ADDED:
            return False
        mean = self.added_error / self.added_since_training
        return mean > DRIFT_FACTOR * max(self.coding_error, 1e-9)

    def remove(self, ids: np.ndarray) -> int:
        with self._lock:
            return self._remove(np.ascontiguousarray(ids, dtype=np.int64))

    def _remove(self, ids: np.ndarray) -> int:
        faiss = _faiss()
        if len(ids) == 0 or self._index.ntotal == 0:
            return 0
        if self.family == FLAT:
            return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
        # The IVF's id hashtable removes only by an explicit array (it skips ids it does
        # not hold, and repeats).
        return int(self._index.remove_ids(faiss.IDSelectorArray(len(ids),
                                                                faiss.swig_ptr(ids))))

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; ``allowed`` restricts to those ids. -1 pads."""
        faiss = _faiss()
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n = len(self)
        if n == 0 or k <= 0:
            return (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0),
                                                                       np.int64))
        k = min(k, n)
        if allowed is not None and len(allowed) == 0:
            return (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0),
                                                                       np.int64))
        params = faiss.SearchParametersIVF() if self.family != FLAT \
            else faiss.SearchParameters()
        if self.family != FLAT:
            # A folder holding a share f of the library: probing 1/f times the lists
            # meets as many of its photos as an unfiltered search meets in all.
            # (``allowed`` may name photos with no vector: the share is at most 1.)
            share = 1.0 if allowed is None else min(1.0, max(len(allowed), 1) / n)
            params.nprobe = int(min(self._index.nlist,
                                    math.ceil(max(self.nprobe, 1) / share)))
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            params.sel = selector  # ``selector`` must outlive the search: FAISS keeps a pointer
            k = min(k, len(allowed))
        # FAISS is not safe to read while another thread adds or removes vectors.
        with self._lock:
            scores, ids = self._index.search(queries, k, params=params)
        return scores, ids

    # Persistence ---------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write atomically: temp file in the same folder, fsync, rename.

        Raises:
            IndexFileError: the file could not be written; any previous file is intact.
        """
        write_index_file(path, self.to_bytes())

    def to_bytes(self) -> bytes:
        """The whole file's content: a consistent snapshot taken under the index's lock.

        Copying memory is quick; writing it out is not, and is left to the caller, so a
        save never holds up a search.
        """
        return pack_index(*self.snapshot())

    def snapshot(self) -> tuple[IndexHeader, bytes]:
        """The header and FAISS blob of the current state, taken under the lock."""
        faiss = _faiss()
        with self._lock:
            blob = bytes(faiss.serialize_index(self._index))
            header = IndexHeader(self.model_id, self.dim, self.generation, len(self),
                                 xxhash.xxh3_64_hexdigest(blob), self.family, self.nprobe,
                                 self.trained_on, self.recall, self.coding_error)
        return header, blob

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (each must be present)."""
        with self._lock:
            return np.stack([self._index.reconstruct(int(i)) for i in ids]) if len(ids) \
                else np.zeros((0, self.dim), np.float32)

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        """Read a saved index.

        Raises:
            IndexFileError: missing, truncated, corrupt, or of another format.
        """
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise IndexFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
        return cls.from_bytes(data, path)[0]

    @classmethod
    def from_bytes(cls, data: bytes, path: Path) -> tuple[VectorIndex, str]:
        """The index in a base file's bytes, and the file's checksum (its delta log's key).

        Raises:
            IndexFileError: truncated, corrupt, or of another format.
        """
        faiss = _faiss()
        header, blob = unpack_index(data, path)
        if header.family not in (FLAT, IVF_SQ8):
            raise IndexFileError(f"{path} holds an index family this version does not know "
                                 f"({header.family})")
        try:
            index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        except RuntimeError as exc:
            raise IndexFileError(f"{path} is not a readable FAISS index: {exc}") from exc
        if index.d != header.dim or index.ntotal != header.count:
            raise IndexFileError(f"{path} does not match its own header")
        loaded = cls(header.dim, header.model_id, header.generation, index, header.family,
                     header.nprobe, header.trained_on)
        loaded.recall = header.recall
        loaded.coding_error = header.coding_error
        return loaded, header.checksum


@dataclass(frozen=True, slots=True)
class Saved:
    """An index read from its files, and what the files are for the next save."""

    index: VectorIndex
    checksum: str  # the base's: the key of the log that extends it
    base_bytes: int
    log_bytes: int
    log_records: int
    extendable: bool  # the log on disk can take more records (else write a whole base)


def load_saved(path: Path) -> Saved:
    """The saved index: the base file with its delta log replayed.

    A log for another base is ignored and a gap stops the replay; either way the
    index's generation then says how far it got, for the caller to check. The replay
    applies the records' net effect at once (the last change of each id wins): removal
    from an exact index costs a pass over the whole index, once, not once a record.

    Raises:
        IndexFileError: the base is missing or unreadable.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IndexFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    index, checksum = VectorIndex.from_bytes(data, path)
    log = read_changes(delta_path(path), checksum)
    extendable = log.clean
    latest: dict[int, np.ndarray | None] = {}
    generation = index.generation
    for change in log.changes:
        if change.after <= generation:
            continue  # already in the base (a log not yet restarted after a merge)
        if change.before != generation:
            extendable = False
            break
        latest.update(dict.fromkeys(change.removed.tolist()))
        latest.update(zip(change.added.tolist(), change.vectors, strict=True))
        generation = change.after
    if latest:
        touched = np.fromiter(latest, np.int64, len(latest))
        kept = [(i, v) for i, v in latest.items() if v is not None]
        index.apply(Change(index.generation, generation, touched,
                           np.array([i for i, _ in kept], np.int64),
                           np.stack([v for _, v in kept]) if kept
                           else np.zeros((0, index.dim), np.float32)))
    index.generation = generation
    try:
        log_bytes = delta_path(path).stat().st_size
    except OSError:
        log_bytes = 0
    return Saved(index, checksum, len(data), log_bytes, log.records, extendable)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine between each row of ``a`` and the same row of ``b``."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(np.sum(a * b, axis=1) / np.maximum(norms, 1e-12))


def _faiss() -> Any:
    """FAISS, imported on first use (torch's OpenMP runtime may be loaded already)."""
    return faiss_module()
