"""The FAISS inner-product index over photo ids, in the family that suits the library.

The file is a cache of the catalog's vectors: it records the catalog generation and
model it reflects, so a mismatch is detected on open and answered with a rebuild.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from imagesearch.core.index_family import FAMILIES, FLAT, IVF_PQ, IVF_SQ8
from imagesearch.core.index_file import (
    Buffer,
    Change,
    IndexHeader,
    delta_path,
    pack_index,
    read_changes,
    unpack_index,
    write_index_file,
)
from imagesearch.core.index_overlay import (
    Overlay,
    map_file,
    merge_top,
    read_copy,
    read_in_place,
    serialize,
)
from imagesearch.core.native_libs import faiss_module
from imagesearch.errors import IndexFileError

# When at least DRIFT_MIN_ADDED vectors added since training read back from their 8-bit
# codes DRIFT_FACTOR times worse, on average, than the training vectors did, the library
# has moved away from what the lists learned and they are retrained. Vectors like the
# training ones come out near 1x; a new kind of photo (other clusters) 100-260x here.
DRIFT_FACTOR = 10.0
DRIFT_MIN_ADDED = 1000
# Saved bases are read in place from a memory map (core/index_overlay.py), except on
# Windows: there a mapped file cannot be replaced, so the next save of a whole base by
# this process or another would fail while the map is open.
MAP_FILES = os.name != "nt"
# The changes kept on top of a mapped base are searched exactly, in full, by every query
# (about 2 ms for 4,096 vectors of 512 dimensions here) and held as float32: past these
# counts the index folds them into a copy of its own (the next whole base saved is read
# in place again).
OVERLAY_MAX_ADDED = 4096
OVERLAY_MAX_HIDDEN = 65536

log = logging.getLogger(__name__)


class CannotMapError(IndexFileError):
    """The file could not be memory-mapped (it may still be readable)."""


class VectorIndex:
    """Inner-product search keyed by catalog photo id: exact (IDMap2 over Flat), or
    IVF-SQ8 with a calibrated probe count (core/index_family.py).

    The FAISS object is either the index's own (built here, or read into memory) or a
    base read in place from its memory-mapped file, read-only: then changes go to an
    ``Overlay`` on top of it, which a search consults too.

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
        # A base read in place: the mapped file's blob, which ``_index`` points into
        # (None: ``_index`` is the index's own), its ids (sorted, on first need) and the
        # changes made on top of it.
        self._mapped: np.ndarray | None = None
        self._mapped_ids: np.ndarray | None = None
        self._overlay: Overlay | None = None
        self.version = 0  # bumped by every change (a save can tell if one came after it)

    @classmethod
    def from_trained(cls, trained: Any, ids: np.ndarray, vectors: np.ndarray, model_id: str,
                     generation: int, nprobe: int, trained_on: int,
                     family: str = IVF_SQ8) -> VectorIndex:
        """An IVF index around ``trained`` (core/index_family.py), filled with ``ids``."""
        if len(np.unique(ids)) != len(ids):
            raise ValueError("an index is built from distinct ids")
        for start in range(0, len(ids), 65536):  # float32 copies of a slice at a time
            trained.add_with_ids(
                np.ascontiguousarray(vectors[start:start + 65536], dtype=np.float32),
                np.ascontiguousarray(ids[start:start + 65536], dtype=np.int64))
        index = cls(int(trained.d), model_id, generation, trained, family, nprobe,
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
            extra = self._overlay.size() if self._overlay is not None else 0
            return int(self._index.ntotal) + extra

    @property
    def mapped(self) -> bool:
        """The index reads its base in place from the file's memory map."""
        return self._mapped is not None

    def ids(self) -> np.ndarray:
        with self._lock:
            if self._overlay is not None:
                return self._overlay.ids()
            return self._base_ids()

    def _base_ids(self) -> np.ndarray:
        faiss = _faiss()
        if self._mapped_ids is not None:
            return self._mapped_ids.copy()
        if self.family == FLAT:
            return np.asarray(faiss.vector_to_array(self._index.id_map), dtype=np.int64)
        lists = self._index.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                 for i in range(lists.nlist) if lists.list_size(i)]
        return (np.concatenate(parts).astype(np.int64) if parts
                else np.zeros(0, np.int64))

    def _changes_on_top(self) -> Overlay:
        """The overlay that takes the changes to a mapped base (made on first need)."""
        if self._overlay is None:
            if self._mapped_ids is None:
                self._mapped_ids = np.sort(self._base_ids())
            self._overlay = Overlay(self.dim, self._mapped_ids)
        return self._overlay

    def apply(self, change: Change) -> None:
        """Replay one commit: its removals, then its additions (one removal pass: an
        exact index's costs a pass over all of it)."""
        ids, vectors = self._checked(change.added, change.vectors)
        with self._lock:
            self._remove(np.union1d(np.asarray(change.removed, dtype=np.int64), ids))
            self._add_new(ids, vectors)
            self.generation = change.after
            self.version += 1

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace vectors for ``ids``."""
        ids, vectors = self._checked(ids, vectors)
        with self._lock:
            self._remove(ids)
            self._add_new(ids, vectors)
            self.version += 1

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
        if self._mapped is not None:
            self._changes_on_top().add(ids, vectors)
            self._own_if_overgrown()
        else:
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
        if self.family in (FLAT, IVF_PQ) or self.added_since_training < DRIFT_MIN_ADDED:
            return False  # (a compact library's codes are the catalog's own: fixed)
        mean = self.added_error / self.added_since_training
        return mean > DRIFT_FACTOR * max(self.coding_error, 1e-9)

    def remove(self, ids: np.ndarray) -> int:
        with self._lock:
            self.version += 1
            return self._remove(np.unique(np.asarray(ids, dtype=np.int64)))

    def _remove(self, ids: np.ndarray) -> int:
        """Remove distinct ``ids``; returns how many were in the index."""
        faiss = _faiss()
        if len(ids) == 0 or len(self) == 0:
            return 0
        if self._mapped is not None:
            removed = self._changes_on_top().remove(ids)
            self._own_if_overgrown()
            return removed
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
        selector = None
        if allowed is not None:
            # ``selector`` must outlive the search: FAISS keeps a pointer
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            params.sel = selector
            k = min(k, len(allowed))
        # FAISS is not safe to read while another thread adds or removes vectors.
        with self._lock:
            overlay = self._overlay
            if overlay is None or overlay.empty:
                scores, ids = self._index.search(queries, k, params=params)
                return np.asarray(scores), np.asarray(ids)
            added = overlay.search(queries, k, selector)
            if not self._index.ntotal:  # an empty base: FAISS refuses to search for none
                return merge_top(added, (added[0][:, :0], added[1][:, :0]), k)  # padded
            base_sel, keep_alive = overlay.base_selector(selector)
            params.sel = base_sel
            base = self._index.search(queries, min(k, int(self._index.ntotal)), params=params)
            del keep_alive
            return merge_top(base, added, k)

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

    def snapshot(self) -> tuple[IndexHeader, Sequence[Buffer]]:
        """The header and FAISS blob of the current state, taken under the lock.

        A mapped base with changes on top becomes an index of its own first, the
        changes folded in (a copy of the base in memory, given back by ``adopt_file``
        once the file written from this snapshot is read in place). That copy is made
        under the lock: at a million photos it holds searches up for about 0.8 s, where
        an index already in memory holds them up for the serialisation alone
        (bench/index_open.py).
        """
        with self._lock:
            blob: Sequence[Buffer]
            if self._mapped is not None and (self._overlay is None or self._overlay.empty):
                blob = [self._mapped.data]  # the base as it was serialised (read-only)
            else:
                self._own()
                blob = serialize(self._index)
            digest = xxhash.xxh3_64()
            for piece in blob:
                digest.update(piece)
            header = IndexHeader(self.model_id, self.dim, self.generation, len(self),
                                 digest.hexdigest(), self.family, self.nprobe,
                                 self.trained_on, self.recall, self.coding_error)
        return header, blob

    def _own_if_overgrown(self) -> None:
        overlay = self._overlay
        if overlay is not None and (overlay.added.ntotal > OVERLAY_MAX_ADDED
                                    or len(overlay.hidden) > OVERLAY_MAX_HIDDEN):
            self._own()

    def _own(self) -> None:
        """Make the index its own: a copy of the mapped base in memory, the changes kept
        on top of it folded in. Call under the lock."""
        if self._mapped is None:
            return
        own = read_copy(self._mapped)
        overlay = self._overlay
        if overlay is not None:
            hidden = np.ascontiguousarray(overlay.hidden)
            if len(hidden):
                faiss = _faiss()
                own.remove_ids(faiss.IDSelectorBatch(hidden) if self.family == FLAT
                               else faiss.IDSelectorArray(len(hidden),
                                                          faiss.swig_ptr(hidden)))
            if overlay.added.ntotal:
                own.add_with_ids(overlay.added_vectors(), overlay.added_ids())
        self._index = own
        self._mapped = self._mapped_ids = None
        self._overlay = None

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (each must be present), as the index codes them."""
        with self._lock:
            if not len(ids):
                return np.zeros((0, self.dim), np.float32)
            ids = np.asarray(ids, dtype=np.int64)
            overlay = self._overlay
            held = overlay.held(ids) if overlay is not None else np.zeros(len(ids), bool)
            if overlay is not None and np.isin(ids[~held], overlay.hidden).any():
                # As FAISS says of an id an index of its own does not hold.
                raise RuntimeError("a photo id asked for is not in the index")
            rows = []
            for i, here in zip(ids.tolist(), held.tolist(), strict=True):
                if here:  # kept exactly on top of the base: coded as the base would be
                    assert overlay is not None
                    rows.append(self.requantized(overlay.vector(i)[None])[0])
                else:
                    rows.append(np.asarray(self._index.reconstruct(i), dtype=np.float32))
            return np.stack(rows)

    def adopt_file(self, path: Path, checksum: str, version: int) -> bool:
        """Read the base just saved to ``path`` in place, in place of what is in memory.

        Only if no change came after the snapshot it was written from (``version``) and
        the file is the one written (``checksum``); a save that wrote a whole base so
        gives back the memory the index held. Returns whether it did.
        """
        if not MAP_FILES:
            return False
        try:
            header, index, blob, _ = _read_in_place(path)
        except IndexFileError as exc:
            log.info("the saved search index stays in memory: %s", exc)
            return False
        with self._lock:
            if self.version != version or header.checksum != checksum:
                return False
            self._index, self._mapped = index, blob
            self._mapped_ids = None
            self._overlay = None
        return True

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
        header, blob = unpack_index(data, path)
        index = _read_faiss(header, np.frombuffer(blob, dtype=np.uint8), path, read_copy)
        return cls._from_header(header, index), header.checksum

    @classmethod
    def open_in_place(cls, path: Path) -> tuple[VectorIndex, str, int]:
        """The index in a base file, read in place from its memory map; the file's
        checksum and size.

        Raises:
            IndexFileError: missing, truncated, corrupt, or of another format.
        """
        header, index, blob, size = _read_in_place(path)
        loaded = cls._from_header(header, index)
        loaded._mapped = blob
        return loaded, header.checksum, size

    @classmethod
    def _from_header(cls, header: IndexHeader, index: Any) -> VectorIndex:
        loaded = cls(header.dim, header.model_id, header.generation, index, header.family,
                     header.nprobe, header.trained_on)
        loaded.recall = header.recall
        loaded.coding_error = header.coding_error
        return loaded


def _read_in_place(path: Path) -> tuple[IndexHeader, Any, np.ndarray, int]:
    """A base file's header, its FAISS index read in place, the mapped blob the index
    points into (keep it as long as the index), and the file's size.

    Raises:
        IndexFileError: missing, truncated, corrupt, or of another format.
    """
    try:
        data = map_file(path)
    except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
        raise CannotMapError(f"cannot map {path}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from exc
    header, blob = unpack_index(memoryview(data.data), path)
    array = np.frombuffer(blob, dtype=np.uint8)
    return header, _read_faiss(header, array, path, read_in_place), array, int(data.size)


def _read_faiss(header: IndexHeader, blob: np.ndarray, path: Path,
                read: Callable[[np.ndarray], Any]) -> Any:
    """The FAISS index in a base file's checked blob, by ``read``, checked against the
    file's header.

    Raises:
        IndexFileError: of an unknown family, unreadable, or not what the header says.
    """
    if header.family not in FAMILIES:
        raise IndexFileError(f"{path} holds an index family this version does not know "
                             f"({header.family})")
    try:
        index = read(blob)
    except RuntimeError as exc:
        raise IndexFileError(f"{path} is not a readable FAISS index: {exc}") from exc
    if index.d != header.dim or index.ntotal != header.count:
        raise IndexFileError(f"{path} does not match its own header")
    return index


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
    """The saved index: the base file (read in place, except on Windows) with its delta
    log replayed (on top of it, core/index_overlay.py).

    A log for another base is ignored and a gap stops the replay; either way the
    index's generation then says how far it got, for the caller to check. The replay
    applies the records' net effect at once (the last change of each id wins): removal
    from an exact index costs a pass over the whole index, once, not once a record.

    Raises:
        IndexFileError: the base is missing or unreadable.
    """
    try:
        if not MAP_FILES:
            raise CannotMapError("memory maps are not used here")
        index, checksum, base_bytes = VectorIndex.open_in_place(path)
    except CannotMapError as exc:
        # A file system without memory maps, say, or no address space left: read into
        # memory as on Windows (a missing or empty file then fails as it should).
        try:
            size = path.stat().st_size
        except OSError:
            size = 0  # missing or unreadable: reading it fails below, as it should
        if MAP_FILES and size:
            log.warning("the search index is read into memory: %s", exc)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise IndexFileError(f"cannot read {path}: {error.strerror or error}"
                                 ) from error
        index, checksum = VectorIndex.from_bytes(data, path)
        base_bytes = len(data)
    journal = read_changes(delta_path(path), checksum)
    extendable = journal.clean
    latest: dict[int, np.ndarray | None] = {}
    generation = index.generation
    for change in journal.changes:
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
    return Saved(index, checksum, base_bytes, log_bytes, journal.records, extendable)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine between each row of ``a`` and the same row of ``b``."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(np.sum(a * b, axis=1) / np.maximum(norms, 1e-12))


def _faiss() -> Any:
    """FAISS, imported on first use (torch's OpenMP runtime may be loaded already)."""
    return faiss_module()
