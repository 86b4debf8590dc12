"""Keeps the on-disk FAISS index in step with the catalog, which is the source of truth.

The index's family follows the library's size (core/index_family.py): a library that
grows past exact search gets an approximate index trained in the background and swapped
in whole (services/index_upgrade.py). On disk it is a base file plus a delta log of the
commits since (core/index_file.py), so a save writes what changed; the base is rewritten
only when the log has grown to a quarter of it, or the index was rebuilt.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imagesearch.core.index_family import (
    FLAT,
    FLAT_MAX,
    Plan,
    choose_family,
    describe,
    needs_retraining,
    refused_recently,
)
from imagesearch.core.index_file import (
    Change,
    append_changes,
    delta_path,
    index_parts,
    peek_header,
    record_bytes,
    start_delta_log,
    write_index_file,
)
from imagesearch.core.vector_index import VectorIndex, load_saved, row_cosines
from imagesearch.errors import IndexFileError
from imagesearch.services import index_upgrade
from imagesearch.services.index_upgrade import Upgrade
from imagesearch.services.save_schedule import SaveSchedule
from imagesearch.services.stored_vectors import StoredVectors

if TYPE_CHECKING:
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
_CHECK_COSINE = 0.999  # two codings of one vector; another photo's vector is far below
# The log is folded into a new base once it holds this share of the base's bytes (or
# at least MERGE_MIN_BYTES): opening replays it, so it must stay small beside the base.
MERGE_SHARE = 0.25
MERGE_MIN_BYTES = 32 * 2 ** 20
# ... or once it holds this many records: each replayed record costs an exact index a
# pass over all of it (the replay nets them, but a long log still slows opening).
MERGE_MAX_RECORDS = 2000
INDEX_MEMORY_MB = 1024  # the default budget for the index's vectors in memory


def index_path(index_dir: Path, model_id: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)
    return index_dir / f"{slug}.faiss"


class VectorStore:
    """The live index for one model: opened (or rebuilt) lazily, saved in the background.

    Args:
        save_delay_s: how long changes must be quiet before the file is written; 0 writes
            it at once on each ``save_soon()`` (the CLI's one-shot commands).
        save_max_delay_s: the longest a change waits to be written during a steady stream.
        memory_mb: the budget for exact vectors in memory; past it the index goes
            approximate (core/index_family.py).
        background: a change of index family is built on a thread of its own while search
            goes on; False (one-shot commands) builds it in ``close()`` if this process
            changed the library.
        flat_max: the largest library searched exactly (tests lower it).
    """

    def __init__(self, catalog: Catalog, index_dir: Path, model_id: str,
                 save_delay_s: float = SAVE_DELAY_S,
                 save_max_delay_s: float = SAVE_MAX_DELAY_S,
                 memory_mb: int = INDEX_MEMORY_MB, background: bool = True,
                 flat_max: int | None = None) -> None:
        self.catalog = catalog
        self.rows = StoredVectors(catalog, model_id)
        self.path = index_path(index_dir, model_id)
        self.delta = delta_path(self.path)
        self.model_id = model_id
        self.save_delay_s = save_delay_s
        self.save_max_delay_s = max(save_max_delay_s, save_delay_s)
        self.memory_mb = memory_mb
        self.background = background
        self.flat_max = flat_max
        self._index: VectorIndex | None = None
        self._lock = threading.RLock()  # opening and changing the index; not searching it
        self._changes = 0  # bumped by every change the file does not have yet...
        self._saved_changes = 0  # ...and the count the file on disk reflects
        # What the files on disk hold: the base the log extends (None: the next save
        # writes a base), the log's size, and the commits not in either yet.
        self._base_checksum: str | None = None
        self._base_bytes = 0
        self._delta_bytes = 0
        self._delta_records = 0
        self._pending: list[Change] = []
        self._epoch = 0  # bumped whenever the index is replaced: pending commits are moot
        self._upgrade: Upgrade | None = None
        self._upgrader: threading.Thread | None = None
        self._touched = False  # this process changed the index (for ``close()``)
        self._upgrade_failed = False  # a family change failed: not retried this process
        self._save_lock = threading.Lock()  # one writer of the file at a time
        self._schedule = SaveSchedule(self._flush_reporting, save_delay_s,
                                      save_max_delay_s, "imagesearch-index-saver")
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

    def open_later(self) -> None:
        """Open the index on a thread of its own, so the first search need not wait.

        At a million photos opening maps a 0.5 GB file and checks it against the
        catalog's ids (about 0.7 s here; bench/index_open.py).
        """
        threading.Thread(target=self._open_quietly, daemon=True,
                         name="imagesearch-index-open").start()

    def _open_quietly(self) -> None:
        try:
            self.index()
        except Exception:  # a search opens it again and reports what is wrong
            log.exception("opening the search index in the background failed")

    def _open(self, dim: int | None) -> tuple[VectorIndex | None, bool]:
        self._remove_stale_temp_files()
        self._forget_files()
        generation = self.catalog.generation()
        reason = None
        loaded = None
        try:
            loaded = self._load()
        except IndexFileError as exc:
            reason = "no index file yet" if not self.path.exists() else str(exc)
        if loaded is not None:
            reason = self._mismatch(loaded, generation)
            if reason is None:
                self._consider_family(loaded)
                return loaded, False
            self._forget_files()
        ids, vectors = self.rows.all()
        if len(ids) == 0 and dim is None:
            return None, False
        d = vectors.shape[1] if len(ids) else int(dim or 0)
        log.info("rebuilding the search index for %s from the catalog: %s", self.model_id,
                 reason)
        self.last_rebuild_reason = reason
        self._changes += 1
        # Exact first, whatever the size: it needs no training, so search works at once;
        # a larger library's approximate index follows in the background.
        index = VectorIndex.build(ids, vectors, d, self.model_id, generation)
        header = peek_header(self.path)
        if header is not None and header.family == FLAT:
            index.trained_on = header.trained_on  # lists refused at that size: not again
        self._consider_family(index)
        return index, True

    def _load(self) -> VectorIndex:
        """The base file with its delta log replayed.

        Raises:
            IndexFileError: the base is missing or unreadable.
        """
        saved = load_saved(self.path)
        # A log that cannot be extended (none, another base's, torn) would hide every
        # record appended to it: the next save writes a whole base instead.
        self._base_checksum = saved.checksum if saved.extendable else None
        self._base_bytes = saved.base_bytes
        self._delta_bytes = saved.log_bytes
        self._delta_records = saved.log_records
        return saved.index

    def _forget_files(self) -> None:
        """The next save writes a whole base: nothing on disk is known to extend."""
        self._base_checksum = None
        self._pending = []
        self._epoch += 1

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
        return mismatch(index, self.model_id, generation,
                        lambda: self.catalog.vector_ids(self.model_id), self.rows.of)

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
                    self._drop()
        return self.index()

    def _drop(self) -> None:
        """Forget the in-memory index; the next use reopens it from the files or catalog."""
        self._index = None
        self._forget_files()
        if self._upgrade is not None:
            self._upgrade.cancelled.set()
            self._upgrade = None

    def describe(self) -> str | None:
        """The index in a line (core/index_family.py), from memory or the file's header.

        None when there is no index yet. Reads no more than the header: cheap to call.
        """
        index = self._index
        if index is not None:
            return describe(index.family, len(index), index.nprobe, index.recall)
        header = peek_header(self.path)
        if header is None or header.model_id != self.model_id:
            return None
        return describe(header.family, header.count, header.nprobe, header.recall)

    # Choosing the family ---------------------------------------------------------------------

    def _consider_family(self, index: VectorIndex) -> None:
        """Start building a better family for ``index``'s size, if it has outgrown its own.

        Call under ``_lock`` (or while nothing else can use the store).
        """
        if (not self.background or self._upgrade is not None or self._upgrade_failed
                or self._schedule.closed):
            return
        upgrade = self._wanted(index)
        if upgrade is None:
            return
        self._upgrade = upgrade
        log.info("building a new search index for %s: %s", self.model_id, upgrade.plan.reason)
        self._upgrader = threading.Thread(target=self._run_upgrade, args=(upgrade,),
                                          daemon=True, name="imagesearch-index-upgrade")
        self._upgrader.start()

    def _wanted(self, index: VectorIndex) -> Upgrade | None:
        kwargs = {} if self.flat_max is None else {"flat_max": self.flat_max}
        coded = self.rows.codec() is not None
        plan = choose_family(len(index), index.dim, self.memory_mb, coded=coded, **kwargs)
        # Going back to exact search only once well below the line, so a library that
        # hovers around it is not rebuilt back and forth.
        if plan.family == FLAT and index.family != FLAT and not coded and \
                len(index) * 2 > (self.flat_max or FLAT_MAX):
            plan = Plan(index.family, f"{len(index):,} photos, near the line: staying "
                                      "approximate")
        if plan.family == index.family and not index.drifted and not needs_retraining(
                index.family, len(index), index.trained_on):
            return None
        if plan.family != FLAT and refused_recently(len(index), index.refused_at):
            return None  # new lists missed the recall target at about this size
        if index.family == FLAT and plan.family != FLAT and refused_recently(
                len(index), index.trained_on):
            return None  # the lists could not reach the recall target at about this size
        return Upgrade(index, plan)

    def _run_upgrade(self, upgrade: Upgrade) -> None:
        try:
            built = index_upgrade.build(upgrade, self.rows)
        except Exception:  # the exact index goes on serving; logged
            log.exception("building the new search index failed; the current one goes "
                          "on serving, and this is not tried again until the next start")
            built = None
            self._upgrade_failed = True
        with self._lock:
            if self._upgrade is not upgrade:
                return  # dropped or superseded meanwhile
            self._upgrade = None
            if built is None or self._index is not upgrade.base:
                return
            self._index = index_upgrade.catch_up(upgrade, built)
            self._forget_files()
            self._changes += 1
        self.save_soon()

    def mark_changed(self) -> None:
        """This process changed the library outside ``apply`` (its vectors were coded
        or made float16 again): a one-shot command builds the family it needs as it
        closes, as after any other change."""
        with self._lock:
            self._touched = True

    def upgrade_now(self) -> bool:
        """Build the family the library needs in this thread; True if it changed.

        For one-shot commands (``background`` False), which have no time to wait for a
        background thread: ``close()`` calls it when this process changed the library.
        """
        with self._lock:
            index = self._index
            upgrade = None if index is None else self._wanted(index)
            if upgrade is None:
                return False
            built = index_upgrade.build(upgrade, self.rows)
            if built is None:
                return False
            self._index = index_upgrade.catch_up(upgrade, built)
            self._forget_files()
            self._changes += 1
            return True

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
                    self._touched = True
                return  # opened from the catalog, which already holds this commit
            if index.generation != commit.before:
                log.info("the catalog was at generation %d before this commit, the search "
                         "index at %d: another process wrote in between; reloading the "
                         "index from the catalog", commit.before, index.generation)
                self._drop()
                return
            # Copies (the change is kept for the next save and an upgrade's journal after
            # this returns), rounded as the catalog stores them: the index then holds what
            # a rebuild from the catalog would, to the bit.
            change = Change(commit.before, commit.after,
                            np.array(removed_ids, dtype=np.int64),
                            np.array(added_ids, dtype=np.int64),
                            np.asarray(vectors, dtype=np.float16).astype(np.float32)
                            .reshape(len(added_ids), -1)
                            if len(added_ids) else np.zeros((0, index.dim), np.float32))
            index.apply(change)
            self._changes += 1
            self._touched = True
            self._pending.append(change)
            if self._upgrade is not None:
                self._upgrade.journal.append(change)
            else:
                self._consider_family(index)

    def remove(self, ids: np.ndarray, commit: Commit | None) -> None:
        """Mirror committed deletions."""
        self.apply(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), ids, commit)

    def sync(self, commit: Commit | None) -> None:
        """Record a committed change that moved no vector (a move)."""
        self.remove(np.zeros(0, np.int64), commit)

    # Saving --------------------------------------------------------------------------------

    @property
    def upgrading(self) -> bool:
        """A new index family is being built in the background."""
        return self._upgrade is not None

    @property
    def is_open(self) -> bool:
        """The index is in memory (a search needs no file read)."""
        return self._index is not None

    @property
    def closed(self) -> bool:
        """``close()`` has begun: no more scheduled saves."""
        return self._schedule.closed

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
        if not self._schedule.request():
            return ()
        return (self.save_error,) if self.save_error else ()

    def flush(self) -> None:
        """Write what the files lack: the new commits onto the delta log, or a new base.

        The snapshot is a memory copy taken under the index's lock; the slow part, writing
        and syncing the file, holds no lock a search needs.

        Raises:
            IndexFileError: writing failed; the previous files are intact and the catalog
                still has everything, so the next start rebuilds.
        """
        with self._save_lock:
            with self._lock:
                index = self._index
                if index is None or self._changes == self._saved_changes:
                    return
                changes, epoch = self._changes, self._epoch
                pending = list(self._pending)
                log_size = self._delta_bytes + sum(record_bytes(c) for c in pending)
                whole = (self._base_checksum is None
                         or self._delta_records + len(pending) > MERGE_MAX_RECORDS
                         or log_size > max(MERGE_MIN_BYTES, MERGE_SHARE * self._base_bytes))
                snapshot = index.snapshot() if whole else None
                version = index.version
            parts = None
            if snapshot is not None:
                header, blob = snapshot
                parts = index_parts(header, blob)
                del snapshot, blob
                write_index_file(self.path, parts)
                # The old log extended the old base: replace it with an empty one for the
                # new base (a crash in between leaves a log for another base: ignored).
                size = start_delta_log(self.delta, header.checksum)
                # The index in memory is what was just written (unless a change came
                # meanwhile): read in place from the file, it gives its memory back.
                index.adopt_file(self.path, header.checksum, version)
            else:
                try:
                    size = append_changes(self.delta, pending)
                except IndexFileError:
                    with self._lock:
                        if self._epoch == epoch:
                            # A torn record would hide every later one: start afresh.
                            self._base_checksum = None
                    raise
            with self._lock:
                self._saved_changes = changes
                if self._epoch != epoch:
                    # The index was replaced meanwhile (a family change, or reopened after
                    # another process wrote): what was just written is not its base.
                    self._base_checksum = None
                    self._changes += 1
                    return
                del self._pending[:len(pending)]
                self._delta_bytes = size
                if parts is not None:
                    self._base_checksum = header.checksum
                    self._base_bytes = sum(len(part) for part in parts)
                    self._delta_records = 0
                else:
                    self._delta_records += len(pending)

    def close(self) -> tuple[str, ...]:
        """Stop the background saver and write what is unsaved, so the next start is quick.

        Returns the warning to report if that last write failed.
        """
        self._schedule.stop()
        with self._lock:
            if self._upgrade is not None:
                self._upgrade.cancelled.set()  # the next start builds it again
                self._upgrade = None
        if not self.background and self._touched:
            try:
                self.upgrade_now()
            except Exception:  # what there is still gets saved; the next run tries again
                log.exception("building the new search index failed")
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


def mismatch(index: VectorIndex, model_id: str, generation: int,
             stored_ids: Callable[[], np.ndarray],
             stored_vectors: Callable[[np.ndarray], np.ndarray]) -> str | None:
    """Why an index file opened for ``model_id`` does not hold what the catalog does, or
    None when it does.

    Args:
        generation: the catalog's, read before the file was.
        stored_ids: the ids of the catalog's vectors for the model.
        stored_vectors: the catalog's float32 vectors of some ids, in their order
            (KeyError when one has none).
    """
    if index.model_id != model_id:
        return f"the file is for model {index.model_id}"
    if index.generation != generation:
        return (f"the file reflects catalog generation {index.generation}, "
                f"the catalog is at {generation}")
    stored = np.sort(stored_ids())
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
        expected = stored_vectors(sample)
    except KeyError:
        return "the catalog changed while the file was being checked"
    if not _same_vectors(index.vectors_of(sample), index.requantized(expected)):
        return (f"the file's vectors differ from the catalog's "
                f"({len(sample)} of {len(stored)} compared)")
    return None


def _same_vectors(stored: np.ndarray, expected: np.ndarray) -> bool:
    """The index's copies are the catalog's vectors as the index codes them, up to the
    rounding of float16 (and the odd 8-bit step or list that rounding tips over)."""
    return bool(np.allclose(stored, expected, atol=_CHECK_ATOL)
                or np.all(row_cosines(stored, expected) >= _CHECK_COSINE))
