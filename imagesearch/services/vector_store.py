"""Keeps the on-disk FAISS index in step with the catalog, which is the source of truth."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import numpy as np

from imagesearch.core.vector_index import VectorIndex
from imagesearch.errors import IndexFileError
from imagesearch.storage.catalog import Catalog

log = logging.getLogger(__name__)

STALE_TEMP_S = 3600.0  # a temp index file this old is a leftover, not a save in progress


def index_path(index_dir: Path, model_id: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)
    return index_dir / f"{slug}.faiss"


class VectorStore:
    """The live index for one model: opened (or rebuilt) lazily, saved atomically."""

    def __init__(self, catalog: Catalog, index_dir: Path, model_id: str) -> None:
        self.catalog = catalog
        self.path = index_path(index_dir, model_id)
        self.model_id = model_id
        self._index: VectorIndex | None = None
        self._lock = threading.RLock()
        self._dirty = False
        self.last_rebuild_reason: str | None = None

    def index(self, dim: int | None = None) -> VectorIndex | None:
        """The index, checked against the catalog on first use. None if empty and dim unknown."""
        with self._lock:
            if self._index is None:
                self._index = self._open(dim)
            return self._index

    def _open(self, dim: int | None) -> VectorIndex | None:
        self._remove_stale_temp_files()
        generation = self.catalog.generation()
        reason = None
        try:
            loaded = VectorIndex.load(self.path)
        except IndexFileError as exc:
            loaded = None
            reason = "no index file yet" if not self.path.exists() else str(exc)
        if loaded is not None:
            reason = self._mismatch(loaded, generation)
            if reason is None:
                return loaded
        ids, vectors = self.catalog.vectors(self.model_id)
        if len(ids) == 0 and dim is None:
            return None
        d = vectors.shape[1] if len(ids) else int(dim or 0)
        log.info("rebuilding the search index for %s from the catalog: %s", self.model_id,
                 reason)
        self.last_rebuild_reason = reason
        index = VectorIndex.build(ids, vectors, d, self.model_id, generation)
        try:
            index.save(self.path)
        except IndexFileError as exc:
            log.warning("%s; the index is kept in memory", exc)
            self._dirty = True
        return index

    def _remove_stale_temp_files(self) -> None:
        """Delete half-written index files left by a process killed while saving.

        Only old ones: a fresh temp file may belong to another process saving right now.
        """
        cutoff = time.time() - STALE_TEMP_S
        for tmp in self.path.parent.glob(self.path.name + ".*.tmp"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    log.info("removed %s, left by an interrupted save", tmp.name)
            except OSError:
                pass

    def _mismatch(self, index: VectorIndex, generation: int) -> str | None:
        if index.model_id != self.model_id:
            return f"the file is for model {index.model_id}"
        if index.generation != generation:
            return (f"the file reflects catalog generation {index.generation}, "
                    f"the catalog is at {generation}")
        stored = np.sort(self.catalog.vector_ids(self.model_id))
        if len(stored) != len(index):
            return f"the file holds {len(index)} vectors, the catalog {len(stored)}"
        if not np.array_equal(stored, np.sort(index.ids())):
            return f"the file's photo ids differ from the catalog's ({len(stored)} each)"
        return None

    def refresh(self) -> VectorIndex | None:
        """The index, first dropped if another process changed the catalog meanwhile.

        Call under the write lane before writing: this process's own writes keep the
        in-memory generation equal to the catalog's there, so a difference means the CLI
        (say) wrote while the app was open, and the index is rebuilt from the catalog.
        """
        with self._lock:
            if self._index is not None:
                current = self.catalog.generation()
                if self._index.generation != current:
                    log.info("the catalog moved from generation %d to %d outside this "
                             "process; reloading the search index", self._index.generation,
                             current)
                    self._index = None
            return self.index()

    def apply(self, added_ids: np.ndarray, vectors: np.ndarray, removed_ids: np.ndarray,
              generation: int) -> None:
        """Mirror a committed catalog change in memory; the file is written by save()."""
        with self._lock:
            index = self.index(vectors.shape[1] if len(vectors) else None)
            if index is None:
                return
            if len(removed_ids):
                index.remove(removed_ids)
            if len(added_ids):
                index.add(added_ids, vectors)
            index.generation = generation
            self._dirty = True

    def remove(self, ids: np.ndarray, generation: int) -> None:
        """Mirror committed deletions."""
        self.apply(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), ids, generation)

    def sync(self, generation: int) -> None:
        """Record a committed change that moved no vector (a move, a failure)."""
        self.remove(np.zeros(0, np.int64), generation)

    def save(self) -> None:
        """Write the index if it changed.

        Raises:
            IndexFileError: writing failed; the previous file is intact and the catalog
                still has everything, so the next start rebuilds.
        """
        with self._lock:
            if self._index is None or not self._dirty:
                return
            self._index.save(self.path)
            self._dirty = False
