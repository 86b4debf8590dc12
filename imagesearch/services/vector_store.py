"""Keeps the on-disk FAISS index in step with the catalog, which is the source of truth."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import numpy as np

from imagesearch.core.vector_index import VectorIndex, write_index_file
from imagesearch.errors import IndexFileError
from imagesearch.storage.catalog import Catalog, Commit

log = logging.getLogger(__name__)

STALE_TEMP_S = 3600.0  # a temp index file this old is a leftover, not a save in progress
# The file is written once changes have been quiet this long, and at the latest this long
# after the first unsaved one: a burst of watcher batches costs one write, not one each.
# Losing an unsaved file costs only a rebuild from the catalog on the next start.
SAVE_DELAY_S = 10.0
SAVE_MAX_DELAY_S = 120.0
# Vectors compared with the catalog when an index file is opened, spread over its ids:
# enough to notice a file from another library or another embedding of the same photos.
CHECK_SAMPLE = 256
_CHECK_ATOL = 2e-3  # the catalog keeps float16: its values differ by rounding only


def index_path(index_dir: Path, model_id: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)
    return index_dir / f"{slug}.faiss"


class VectorStore:
    """The live index for one model: opened (or rebuilt) lazily, saved in the background.

    Args:
        save_delay_s: how long changes must be quiet before the file is written; 0 writes
            it at once on each ``save_soon()`` (the CLI's one-shot commands).
        save_max_delay_s: the longest a change waits to be written during a steady stream.
    """

    def __init__(self, catalog: Catalog, index_dir: Path, model_id: str,
                 save_delay_s: float = SAVE_DELAY_S,
                 save_max_delay_s: float = SAVE_MAX_DELAY_S) -> None:
        self.catalog = catalog
        self.path = index_path(index_dir, model_id)
        self.model_id = model_id
        self.save_delay_s = save_delay_s
        self.save_max_delay_s = max(save_max_delay_s, save_delay_s)
        self._index: VectorIndex | None = None
        self._lock = threading.RLock()  # opening and changing the index; not searching it
        self._changes = 0  # bumped by every change the file does not have yet...
        self._saved_changes = 0  # ...and the count the file on disk reflects
        self._save_lock = threading.Lock()  # one writer of the file at a time
        self._cond = threading.Condition()  # the background saver's schedule
        self._first_unsaved: float | None = None
        self._last_request = 0.0
        self._saver: threading.Thread | None = None
        self._closed = False
        self.last_rebuild_reason: str | None = None
        self.save_error: str | None = None  # why the latest save failed; None once one works

    # Opening -------------------------------------------------------------------------------

    def index(self, dim: int | None = None) -> VectorIndex | None:
        """The index, checked against the catalog on first use. None if empty and dim unknown."""
        index = self._index  # searches take no lock once it is open
        if index is not None:
            return index
        with self._lock:
            rebuilt = False
            if self._index is None:
                self._index, rebuilt = self._open(dim)
            index = self._index
        if rebuilt:
            self.save_soon()
        return index

    def _open(self, dim: int | None) -> tuple[VectorIndex | None, bool]:
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
                return loaded, False
        ids, vectors = self.catalog.vectors(self.model_id)
        if len(ids) == 0 and dim is None:
            return None, False
        d = vectors.shape[1] if len(ids) else int(dim or 0)
        log.info("rebuilding the search index for %s from the catalog: %s", self.model_id,
                 reason)
        self.last_rebuild_reason = reason
        self._changes += 1
        return VectorIndex.build(ids, vectors, d, self.model_id, generation), True

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
        if len(stored) == 0:
            return None
        # Same ids can still hold other vectors (a photo re-embedded by another process
        # while this file claimed its generation): compare a spread of them too.
        sample = stored[np.unique(np.linspace(0, len(stored) - 1, CHECK_SAMPLE).astype(int))]
        try:
            expected = self.catalog.vectors_of(self.model_id, sample)
        except KeyError:
            return "the catalog changed while the file was being checked"
        if not np.allclose(index.vectors_of(sample), expected, atol=_CHECK_ATOL):
            return (f"the file's vectors differ from the catalog's "
                    f"({len(sample)} of {len(stored)} compared)")
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

    # Mirroring commits ---------------------------------------------------------------------

    def apply(self, added_ids: np.ndarray, vectors: np.ndarray, removed_ids: np.ndarray,
              commit: Commit | None) -> None:
        """Mirror a committed catalog change in memory; the file is written later.

        Only on top of the generation the commit started from: if another process
        committed in between, the index is dropped and reloaded from the catalog (which
        holds both commits) when next used, rather than claim a generation it lacks.
        ``commit`` None: the catalog call had nothing to write, so neither is there here.
        """
        if commit is None:
            return
        with self._lock:
            index = self._index
            if index is None:
                if len(added_ids):  # the first vectors: now the dimension is known
                    self._index, _ = self._open(vectors.shape[1])
                return  # opened from the catalog, which already holds this commit
            if index.generation != commit.before:
                log.info("the catalog was at generation %d before this commit, the search "
                         "index at %d: another process wrote in between; reloading the "
                         "index from the catalog", commit.before, index.generation)
                self._index = None
                return
            if len(removed_ids):
                index.remove(removed_ids)
            if len(added_ids):
                index.add(added_ids, vectors)
            index.generation = commit.after
            self._changes += 1

    def remove(self, ids: np.ndarray, commit: Commit | None) -> None:
        """Mirror committed deletions."""
        self.apply(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), ids, commit)

    def sync(self, commit: Commit | None) -> None:
        """Record a committed change that moved no vector (a move)."""
        self.remove(np.zeros(0, np.int64), commit)

    # Saving --------------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """The index in memory has changes the file does not."""
        return self._index is not None and self._changes != self._saved_changes

    def save_soon(self) -> tuple[str, ...]:
        """Have the file written once changes settle; returns warnings to report now.

        With ``save_delay_s`` 0 the file is written at once and its failure, if any, is
        returned; otherwise the failure of the latest background save is.
        """
        if self.save_delay_s <= 0:
            return self._flush_reporting()
        with self._cond:
            if self._closed:
                return ()
            now = time.monotonic()
            self._last_request = now
            if self._first_unsaved is None:
                self._first_unsaved = now
            if self._saver is None:
                self._saver = threading.Thread(target=self._save_when_quiet, daemon=True,
                                               name="imagesearch-index-saver")
                self._saver.start()
            self._cond.notify_all()
        return (self.save_error,) if self.save_error else ()

    def flush(self) -> None:
        """Write the file now if the index changed since it was last written.

        The snapshot is a memory copy taken under the index's lock; the slow part, writing
        and syncing the file, holds no lock a search needs.

        Raises:
            IndexFileError: writing failed; the previous file is intact and the catalog
                still has everything, so the next start rebuilds.
        """
        with self._save_lock:
            with self._lock:
                index = self._index
                if index is None or self._changes == self._saved_changes:
                    return
                changes = self._changes
                data = index.to_bytes()
            write_index_file(self.path, data)
            with self._lock:
                self._saved_changes = changes

    def close(self) -> tuple[str, ...]:
        """Stop the background saver and write what is unsaved, so the next start is quick.

        Returns the warning to report if that last write failed.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            saver, self._saver = self._saver, None
        if saver is not None:
            saver.join()  # at once when idle; else it finishes the write it is making
        return self._flush_reporting()

    def _flush_reporting(self) -> tuple[str, ...]:
        try:
            self.flush()
        except IndexFileError as exc:
            # The catalog has everything; the next start rebuilds the file from it.
            log.warning("%s", exc)
            self.save_error = str(exc)
            return (self.save_error,)
        self.save_error = None
        return ()

    def _save_when_quiet(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    first = self._first_unsaved
                    if first is None:
                        self._cond.wait()
                        continue
                    due = min(self._last_request + self.save_delay_s,
                              first + self.save_max_delay_s)
                    wait = due - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._closed:
                    return  # close() writes what is left
                self._first_unsaved = None
            self._flush_reporting()
