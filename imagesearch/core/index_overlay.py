"""A search index read straight from its file, and the changes made on top of it.

A saved base file is memory-mapped and FAISS reads its codes in place
(``IO_FLAG_MMAP_IFC``): opening a million photos' index costs a checksum pass over the
page cache, not a copy of half a gigabyte into the process. A mapped index is
read-only (FAISS aborts the process on any attempt to grow or shrink it), so the
changes made after opening (the delta log's records, then new commits) live in an
``Overlay``: the base's ids it hides, and the vectors added since, searched exactly.
A search asks both and merges their top k. Writing a whole base folds the overlay in.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np

from imagesearch.core.native_libs import faiss_module

# The score FAISS gives the -1 ids that pad an inner-product search's results.
PAD_SCORE = -float(np.finfo(np.float32).max)


def map_file(path: Path) -> np.ndarray:
    """The file's bytes, memory-mapped read-only (shared with the page cache).

    Raises:
        OSError: it cannot be opened or mapped (an empty file cannot be).
    """
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    # The array keeps the mapping alive; it is unmapped when the last view goes.
    return np.frombuffer(mapped, dtype=np.uint8)


def read_in_place(blob: np.ndarray) -> Any:
    """The FAISS index serialised in ``blob``, its codes read in place, not copied.

    ``blob`` must outlive the index, which must never be changed: FAISS aborts the
    process when a mapped index is added to or removed from.

    Raises:
        RuntimeError: ``blob`` is not a FAISS index (FAISS's own error).
    """
    faiss = faiss_module()
    reader = faiss.ZeroCopyIOReader(faiss.swig_ptr(blob), blob.size)
    return faiss.read_index(reader, faiss.IO_FLAG_MMAP_IFC)


def read_copy(blob: np.ndarray) -> Any:
    """The FAISS index serialised in ``blob``, as an index of its own that keeps no
    pointer into ``blob``. Read a piece at a time: one copy of the codes, not two."""
    faiss = faiss_module()
    position = 0

    def read(size: int) -> bytes:
        nonlocal position
        piece = blob[position:position + size].tobytes()
        position += len(piece)
        return piece

    return faiss.read_index(faiss.PyCallbackIOReader(read))


def serialize(index: Any) -> list[bytes]:
    """``index`` serialised, in the pieces FAISS wrote it in (about 1 MB each): one copy
    of its codes in all, where ``faiss.serialize_index`` holds two at its peak."""
    faiss = faiss_module()
    pieces: list[bytes] = []

    def write(piece: bytes) -> int:
        pieces.append(bytes(piece))
        return len(piece)

    writer = faiss.PyCallbackIOWriter(write)
    faiss.write_index(index, writer)
    del writer  # flushes what it still buffers
    return pieces


class Overlay:
    """The changes made to a read-only base: base ids hidden, and vectors added since.

    Not thread-safe: the owning VectorIndex calls it under its own lock.

    Args:
        dim: the vectors' dimension.
        base_ids: the ids the base holds, sorted.
    """

    def __init__(self, dim: int, base_ids: np.ndarray) -> None:
        faiss = faiss_module()
        self.dim = dim
        self._base_ids = base_ids
        self.hidden = np.zeros(0, np.int64)  # base ids no longer in the index, sorted
        # Searched exactly: it is kept small (vector_index.OVERLAY_MAX_ADDED).
        self.added = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._keep: Any = None  # a selector of the base ids not hidden (made on demand)
        self._keep_parts: tuple[Any, ...] = ()  # what it points to: kept alive with it

    @property
    def empty(self) -> bool:
        return not len(self.hidden) and self.added.ntotal == 0

    def size(self) -> int:
        """How many photos the overlay adds, net (negative: more hidden than added)."""
        return int(self.added.ntotal) - len(self.hidden)

    def remove(self, ids: np.ndarray) -> int:
        """Drop ``ids`` (sorted-or-not int64, distinct): those added here, and those of the
        base (hidden). Returns how many were in the index."""
        faiss = faiss_module()
        removed = 0
        if self.added.ntotal and len(ids):
            removed = int(self.added.remove_ids(faiss.IDSelectorBatch(ids)))
        in_base = ids[np.isin(ids, self._base_ids, assume_unique=True)]
        fresh = np.setdiff1d(in_base, self.hidden, assume_unique=True)
        if len(fresh):
            self.hidden = np.union1d(self.hidden, fresh)
            self._keep = None
        return removed + len(fresh)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors for ids not in the index (the caller removed them first)."""
        self.added.add_with_ids(vectors, ids)

    def added_ids(self) -> np.ndarray:
        faiss = faiss_module()
        return np.asarray(faiss.vector_to_array(self.added.id_map), dtype=np.int64)

    def added_vectors(self) -> np.ndarray:
        n = int(self.added.ntotal)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self.added.index.reconstruct_n(0, n), dtype=np.float32)

    def ids(self) -> np.ndarray:
        """Every id in the index: the base's not hidden, then those added here."""
        kept = np.setdiff1d(self._base_ids, self.hidden, assume_unique=True)
        return np.concatenate([kept, self.added_ids()])

    def held(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` were added here (their vectors are here, not in the base)."""
        return np.isin(ids, self.added_ids())

    def vector(self, photo_id: int) -> np.ndarray:
        return np.asarray(self.added.reconstruct(int(photo_id)), dtype=np.float32)

    def base_selector(self, allowed: Any | None) -> tuple[Any | None, tuple[Any, ...]]:
        """What a search of the base may return: its ids not hidden, within ``allowed``
        (a FAISS selector, or None for all); and the objects the caller keeps alive
        until the search is done (FAISS holds bare pointers to them)."""
        faiss = faiss_module()
        if not len(self.hidden):
            return allowed, ()
        if self._keep is None:
            batch = faiss.IDSelectorBatch(self.hidden)
            self._keep = faiss.IDSelectorNot(batch)
            self._keep_parts = (batch,)
        if allowed is None:
            return self._keep, (self._keep, *self._keep_parts)
        both = faiss.IDSelectorAnd(self._keep, allowed)
        return both, (self._keep, *self._keep_parts, allowed)

    def search(self, queries: np.ndarray, k: int, allowed: Any | None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The added vectors' top k for each query (-1 pads)."""
        faiss = faiss_module()
        if self.added.ntotal == 0:
            return (np.full((len(queries), k), PAD_SCORE, np.float32),
                    np.full((len(queries), k), -1, np.int64))
        params = faiss.SearchParameters()
        if allowed is not None:
            params.sel = allowed
        scores, ids = self.added.search(queries, min(k, int(self.added.ntotal)),
                                        params=params)
        return np.asarray(scores), np.asarray(ids)


def merge_top(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray],
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (highest scores) of two searches' results per query; -1 pads.

    Each id appears in at most one of the two (an overlay hides the base's copy).
    """
    scores = np.concatenate([first[0], second[0]], axis=1).astype(np.float32)
    ids = np.concatenate([first[1], second[1]], axis=1).astype(np.int64)
    scores[ids < 0] = PAD_SCORE
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_ids = np.take_along_axis(ids, order, axis=1)
    if top_ids.shape[1] < k:  # fewer candidates than asked for, in all
        pad = k - top_ids.shape[1]
        top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=PAD_SCORE)
        top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=-1)
    return top_scores, top_ids
