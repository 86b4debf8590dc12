"""Indexing: scan folders, embed what is new or changed, keep catalog and index in step."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from imagesearch.config import Settings
from imagesearch.core.decode_pool import DecodeJob, DecodePool
from imagesearch.core.encoder import Encoder
from imagesearch.core.imaging import DecodedImage, PreprocessSpec, is_image_name
from imagesearch.core.local_features import FeatureMode
from imagesearch.core.vector_codec import VectorCodec
from imagesearch.domain import FolderInfo, IndexProgress, IndexReport
from imagesearch.errors import CatalogError, ImageSearchError, VectorKindChanged
from imagesearch.services.local_search import LocalIndexService
from imagesearch.services.models import ModelManager
from imagesearch.services.scanning import (
    Plan,
    ScannedFile,
    Subtrees,
    is_skipped,
    mount_gone,
    plan,
    walk,
)
from imagesearch.services.vector_store import VectorStore
from imagesearch.services.write_lane import WriteLane
from imagesearch.storage.catalog import Catalog, CatalogEntry, PhotoUpdate, SubtreeMemory

log = logging.getLogger(__name__)

ProgressCallback = Callable[[IndexProgress], None]
# A stage run after the photos are indexed (AMES descriptors): (progress, cancel).
FollowUp = Callable[[ProgressCallback, threading.Event], object]


# A batch of decoded photos, with the vector of each one that was encoded.
Embedded = tuple[list[DecodedImage], dict[Path, np.ndarray]]


class BatchSource(Protocol):
    """Somewhere else to decode and encode photos (services/cluster.py): batches come
    back in any order, each photo once, and this process stores them."""

    def batches(self, todo: list[DecodeJob], size: int, cancel: threading.Event
                ) -> Generator[Embedded, None, None]: ...


def _no_progress(_: IndexProgress) -> None:
    return None


class IndexingService:
    """Brings the catalog and the index up to date with the library folders."""

    def __init__(self, settings: Settings, catalog: Catalog, models: ModelManager,
                 vectors: VectorStore, lane: WriteLane, local: LocalIndexService) -> None:
        self.settings = settings
        self.catalog = catalog
        self.models = models
        self.vectors = vectors
        self.lane = lane
        self.local = local
        self.features: FeatureMode | None = local.mode
        self.cluster: BatchSource | None = None  # set: photos are embedded there, not here
        self.warnings: list[str] = []  # those of the latest run; each report has its own
        self.excluded = own_data_folders(settings)
        self.followups: list[FollowUp] = []  # composition adds stages (services/context.py)
        # Kept between runs: the watcher's small batches would otherwise pay for
        # starting decode processes every time.
        self._pool: DecodePool | None = None
        self._pool_lock = threading.Lock()
        self._retired = False

    def close(self) -> None:
        """Stop the decode worker processes."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _decode_pool(self, spec: PreprocessSpec | None) -> DecodePool:
        with self._pool_lock:
            if self._pool is None or self._pool.spec != spec:
                if self._pool is not None:
                    self._pool.close()
                self._pool = DecodePool(spec, self.settings.decode_workers or None,
                                        timeout_s=self.settings.decode_timeout_s,
                                        features=self.features)
            return self._pool

    def can_index(self) -> bool:
        """Whether a run can do anything: with the model, or local features without it."""
        return self.models.weights_present() or self.features is not None

    def _wants(self) -> tuple[bool, bool]:
        """(vectors, local features): what an indexed photo should have in this library.

        Without model weights a photo gets local features only (search by image works
        offline); its vector is filled in once the weights are installed.
        """
        return self.models.weights_present(), self.features is not None

    # Whole folders -------------------------------------------------------------------------

    def run(self, folder_ids: Sequence[int] | None = None,
            progress: ProgressCallback | None = None,
            cancel: threading.Event | None = None) -> IndexReport:
        """Scan the library (or some folders of it) and index every change."""
        report = progress or _no_progress
        cancel = cancel or threading.Event()
        started = time.perf_counter()
        folders = [f for f in self.catalog.folders()
                   if folder_ids is None or f.id in folder_ids]
        if not self._retired:  # once a process: details of earlier versions are dead weight
            self._retired = True
            with self.lane:
                self.local.retire_old_extractors()
        expanded = self._expand_if_standard()
        scan = _Scan()
        for folder in folders:
            self._scan_folder(folder, scan, report, cancel)
            if cancel.is_set():
                return IndexReport(cancelled=True, offline_folders=tuple(scan.offline),
                                   seconds=time.perf_counter() - started)
        want_vector, want_features = self._wants()
        work = plan(scan.files, scan.known, want_vector=want_vector,
                    want_features=want_features)
        result = self._apply(work, scan.folder_of, report, cancel)
        for folder in folders:
            if folder.path not in scan.offline:
                self.catalog.set_folder_state(folder.id, online=True, scanned=not cancel.is_set())
        warnings = expanded + self._compress_if_compact(cancel)
        warnings += self._save_index()
        self._after_changes(result, work)
        warnings += self._follow_up(report, cancel)
        return IndexReport(
            added=result["added"], updated=result["updated"], moved=len(work.moves),
            removed=len(work.gone), failed=result["failed"], unchanged=work.unchanged,
            completed=result["completed"], cancelled=cancel.is_set(),
            offline_folders=tuple(scan.offline + scan.parts),
            seconds=time.perf_counter() - started, warnings=warnings + self._model_warning())

    def _scan_folder(self, folder: FolderInfo, scan: _Scan, report: ProgressCallback,
                     cancel: threading.Event) -> None:
        """Walk one library folder into ``scan``; what it cannot see is kept, not gone."""
        if not folder.path.is_dir():
            # Unplugged drive or unmounted share: keep its photos, say it is offline.
            self.catalog.set_folder_state(folder.id, online=False)
            scan.offline.append(folder.path)
            return
        # Read the catalog before walking: a file the watcher stores during the walk is
        # then re-planned as new (a harmless upsert), never taken for deleted.
        entries = self.catalog.entries(folder.id, self.models.model_id, self.local.extractor)
        memory = self.catalog.subtrees(folder.id)
        # Drives seen inside this folder before and gone now are not walked: what is
        # there (an empty mount point, a dangling link) says nothing about their photos.
        gone = {p: why for p, dev in memory.mounts.items()
                if (why := mount_gone(p, dev)) is not None}
        parts = Subtrees(skip=frozenset(gone), excluded=self.excluded)
        found: list[ScannedFile] = []
        for f in walk(folder.path, cancel.is_set, parts):
            found.append(f)
            if (len(scan.files) + len(found)) % 500 == 0:
                report(IndexProgress("scanning", len(scan.files) + len(found), 0,
                                     current=str(folder.path)))
        if cancel.is_set():
            return
        # Only what hides photos the catalog knows, or a drive it remembers, matters.
        offline = {p: why for p, why in {**parts.offline, **gone}.items()
                   if p in memory.mounts or _holds_any(entries, p)}
        if not found and entries and not offline:
            # An unmounted share leaves an empty mount point: offline, not emptied.
            log.warning("%s is empty but the catalog has %d photos there: treating it "
                        "as offline", folder.path, len(entries))
            self.catalog.set_folder_state(folder.id, online=False)
            scan.offline.append(folder.path)
            return
        mounts = {**{p: memory.mounts[p] for p in gone}, **parts.mounts}
        self.catalog.set_subtrees(folder.id, SubtreeMemory(mounts, offline))
        for path, why in offline.items():
            log.warning("%s: %s; its photos are kept", path, why)
        scan.parts.extend(offline)
        for f in found:
            scan.files.append(f)
            scan.folder_of[f.key] = folder.id
        if offline:
            entries = {p: e for p, e in entries.items()
                       if not any(_under(p, o) for o in offline)}
        scan.known.update(entries)

    def retry_failed(self, progress: ProgressCallback | None = None,
                     cancel: threading.Event | None = None) -> IndexReport:
        """Try every failed photo again (after installing a plugin, fixing permissions…)."""
        self.catalog.reset_failed()
        return self.run(progress=progress, cancel=cancel)

    # Individual paths (from the watcher) ---------------------------------------------------

    def update_paths(self, paths: Iterable[Path], progress: ProgressCallback | None = None,
                     cancel: threading.Event | None = None) -> IndexReport:
        """Index these created or modified files; forget those that no longer exist."""
        started = time.perf_counter()
        folders = self.catalog.folders()
        files: list[ScannedFile] = []
        folder_of: dict[str, int] = {}
        known: dict[str, CatalogEntry] = {}
        gone: list[Path] = []
        model_id = self.models.model_id
        for path in dict.fromkeys(paths):
            folder = _owner(folders, path)
            if folder is None or not is_image_name(path.name) or is_skipped(
                    path, folder.path, self.excluded, check_flags=True):
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:
                gone.append(path)
                continue
            except OSError as exc:
                files.append(ScannedFile(str(path), 0, 0.0,
                                         f"cannot read file information: {exc}"))
                folder_of[str(path)] = folder.id
                continue
            if not os.path.isfile(path):
                continue
            files.append(ScannedFile(str(path), st.st_size, st.st_mtime))
            folder_of[str(path)] = folder.id
            entry = self.catalog.entry(path, model_id, self.local.extractor)
            if entry is not None:
                known[str(path)] = entry
        removed = self.remove_paths(gone)
        want_vector, want_features = self._wants()
        work = plan(files, known, complete=False, want_vector=want_vector,
                    want_features=want_features)
        result = self._apply(work, folder_of, progress or _no_progress,
                             cancel or threading.Event())
        warnings = self._compress_if_compact(cancel or threading.Event())
        warnings += self._save_index()
        self._after_changes({**result, "removed": removed}, work)
        warnings += self._follow_up(progress or _no_progress, cancel or threading.Event())
        return IndexReport(added=result["added"], updated=result["updated"], removed=removed,
                           failed=result["failed"], completed=result["completed"],
                           seconds=time.perf_counter() - started, warnings=warnings)

    def remove_paths(self, paths: Iterable[Path]) -> int:
        """Forget photos at (or under) these paths, except on a drive that went away."""
        ids: list[int] = []
        folders = self.catalog.folders()
        for path in paths:
            if self._on_a_gone_drive(folders, path):
                continue  # unplugged, not deleted: the next check marks it offline
            record = self.catalog.photo_by_path(path)
            if record is not None:
                ids.append(record.id)
            ids.extend(int(i) for i in self.catalog.ids_under(path))
        if not ids:
            return 0
        with self.lane:
            self.vectors.refresh()
            self.catalog.remove_photos(ids)
            self.vectors.remove(np.asarray(ids, dtype=np.int64), self.catalog.last_commit())
        return len(ids)

    def _on_a_gone_drive(self, folders: list[FolderInfo], path: Path) -> bool:
        folder = _owner(folders, path)
        if folder is None:
            return False
        mounts = self.catalog.subtrees(folder.id).mounts
        return any((path == m or path.is_relative_to(m) or m.is_relative_to(path))
                   and mount_gone(m, dev) is not None for m, dev in mounts.items())

    def subtrees_changed(self, folder_id: int) -> bool:
        """Whether a drive inside the folder went away or came back, or a part that could
        not be seen can be now: then a scan brings the catalog up to date."""
        memory = self.catalog.subtrees(folder_id)
        for path, device in memory.mounts.items():
            if (mount_gone(path, device) is None) == (path in memory.offline):
                return True
        return any(path not in memory.mounts and _listable(path) for path in memory.offline)

    def move_path(self, src: Path, dst: Path) -> bool:
        """Follow a rename or move reported by the watcher; False if src was unknown."""
        folders = self.catalog.folders()
        target = _owner(folders, dst)
        record = self.catalog.photo_by_path(src)
        if record is None or target is None:
            return False
        try:
            mtime = os.stat(dst).st_mtime
        except OSError:
            return False
        replaced = self.catalog.photo_by_path(dst)
        with self.lane:
            self.vectors.refresh()
            if replaced is not None and replaced.id != record.id:
                # Renamed over another photo (e.g. a.jpg -> b.jpg): b's old entry goes, or
                # the move would break the catalog's one-row-per-path rule.
                self.catalog.remove_photos([replaced.id])
                self.vectors.remove(np.asarray([replaced.id], dtype=np.int64),
                                    self.catalog.last_commit())
            self.catalog.move(record.id, dst, target.id, mtime)
            self.vectors.sync(self.catalog.last_commit())
        return True

    # The pipeline --------------------------------------------------------------------------

    def _apply(self, work: Plan, folder_of: dict[str, int], report: ProgressCallback,
               cancel: threading.Event) -> dict[str, int]:
        if not (work.gone or work.moves or work.problems or work.to_embed
                or work.to_complete):
            return {"added": 0, "updated": 0, "completed": 0, "failed": 0}
        with self.lane:
            # Open (or rebuild) the index before this run's writes move the generation;
            # a rescan that changes nothing never needs it.
            self.vectors.refresh()
            live = self.catalog.folder_ids()
            work.problems = [f for f in work.problems if folder_of[f.key] in live]
            work.moves = [(pid, f) for pid, f in work.moves if folder_of[f.key] in live]
            if work.gone:
                self.catalog.remove_photos(work.gone)
                self.vectors.remove(np.asarray(work.gone, dtype=np.int64),
                                    self.catalog.last_commit())
            for photo_id, f in work.moves:
                self.catalog.move(photo_id, f.path, folder_of[f.key], f.mtime)
                self.vectors.sync(self.catalog.last_commit())
            if work.problems:
                failed = self.catalog.store(self.models.model_id, [
                    PhotoUpdate(f.path, folder_of[f.key], f.size, f.mtime, error=f.problem)
                    for f in work.problems])
                # A photo that became unreadable leaves the results now, not at the next start.
                self.vectors.remove(np.asarray(failed, dtype=np.int64),
                                    self.catalog.last_commit())
        want_vector, want_features = self._wants()
        todo = [DecodeJob(f.path, want_vector, want_features) for f in work.to_embed]
        todo += [DecodeJob(f.path, vec, feat) for f, vec, feat in work.to_complete]
        counts = {"added": 0, "updated": 0, "completed": 0, "failed": len(work.problems)}
        if not todo or cancel.is_set():
            return counts
        new_paths = {f.path for f in work.to_embed[len(work.to_embed) - work.new_count:]}
        edited = {f.path for f in work.to_embed} - new_paths
        self._embed_all(todo, folder_of, (new_paths, edited), counts, report, cancel)
        return counts

    def _embed_all(self, todo: list[DecodeJob], folder_of: dict[str, int],
                   kinds: tuple[set[Path], set[Path]], counts: dict[str, int],
                   report: ProgressCallback, cancel: threading.Event) -> None:
        """Decode and encode (worker processes and this thread, or a cluster's workers),
        then store (writer thread).

        The stages overlap: while batch N is encoded, later photos are decoded (and their
        local features found) and batch N-1 is committed, so the model is rarely left
        waiting.
        """
        batch_size = max(1, self.settings.batch_size)
        if self.cluster is not None:
            phase = "embedding"
            batches = self.cluster.batches(todo, batch_size, cancel)
        else:
            encoder = self.models.encoder() if any(j.pixels for j in todo) else None
            # Only local features to find: the backfill of an existing library.
            phase = "embedding" if encoder is not None else "local features"
            batches = self._local_batches(todo, encoder, batch_size, cancel)
        total, done = len(todo), 0
        started = time.perf_counter()
        in_flight: Future[int] | None = None
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagesearch-writer")
        try:
            for items, vectors in batches:
                if in_flight is not None:  # one commit at a time, in order
                    done += in_flight.result()
                in_flight = writer.submit(self._store, items, vectors, folder_of, kinds,
                                          counts)
                rate = done / max(time.perf_counter() - started, 1e-9)
                report(IndexProgress(phase, done, total, counts["failed"],
                                     current=str(items[-1].path), images_per_second=rate))
                if cancel.is_set():
                    break
            if in_flight is not None:
                done += in_flight.result()
                in_flight = None
        finally:
            batches.close()  # cancels decoding still queued for a cancelled run
            writer.shutdown(wait=True)  # a commit under way always lands
        rate = done / max(time.perf_counter() - started, 1e-9)
        report(IndexProgress("done", done, total, counts["failed"], images_per_second=rate))

    def _local_batches(self, todo: list[DecodeJob], encoder: Encoder | None, size: int,
                       cancel: threading.Event) -> Generator[Embedded, None, None]:
        """Batches decoded by this machine's pool and encoded here, in order."""
        pool = self._decode_pool(encoder.spec if encoder is not None else None)
        stream = pool.decode(todo, lookahead=2 * size, cancel=cancel)
        batch: list[DecodedImage] = []
        try:
            for decoded in stream:
                batch.append(decoded)
                if len(batch) >= size:
                    yield self._encoded(encoder, batch)
                    batch = []
                    if cancel.is_set():
                        return
            if batch and not cancel.is_set():
                yield self._encoded(encoder, batch)
        finally:
            stream.close()

    @staticmethod
    def _encoded(encoder: Encoder | None, batch: list[DecodedImage]) -> Embedded:
        """The batch, and the vector of each photo that came with model pixels."""
        with_pixels = [d for d in batch if d.pixels is not None]
        if encoder is None or not with_pixels:
            return batch, {}
        vectors = encoder.encode_images(np.stack([d.pixels for d in with_pixels
                                                  if d.pixels is not None]), background=True)
        return batch, {d.path: v for d, v in zip(with_pixels, vectors, strict=True)}

    def _store(self, batch: list[DecodedImage], by_path: dict[Path, np.ndarray],
               folder_of: dict[str, int], kinds: tuple[set[Path], set[Path]],
               counts: dict[str, int]) -> int:
        """Commit one batch to the catalog and mirror it in the index (the writer lane)."""
        model_id = self.models.model_id
        new_paths, edited = kinds
        handled = len(batch)
        # Completing an indexed, unchanged photo (its details or vector found later): a read
        # error now (a slow share, a busy disk) must not turn its good data into a failure.
        # The file is the same as when it was indexed; the next run tries again.
        for d in batch:
            if d.error is not None and d.path not in new_paths and d.path not in edited:
                log.info("not completed this time: %s: %s", d.path, d.error)
        batch = [d for d in batch
                 if d.error is None or d.path in new_paths or d.path in edited]
        updates = [
            PhotoUpdate(d.path, folder_of[str(d.path)], d.size, d.mtime, d.content_hash, d.width,
                        d.height, d.format, d.captured_at, d.error, by_path.get(d.path),
                        d.local_features, d.feature_count)
            for d in batch
        ]
        with self.lane:
            self.vectors.refresh()
            # A folder removed from the library while this run was under way: drop its photos.
            live = self.catalog.folder_ids()
            updates = [u for u in updates if u.folder_id in live]
            plain = updates
            for attempt in range(2):
                codec = self.vectors.rows.codec()
                # A compact library: its vectors are stored as codes.
                updates = plain if codec is None else _coded(codec, plain)
                try:
                    ids = self.catalog.store(model_id, updates, self.local.extractor)
                    break
                except VectorKindChanged:  # another process coded (or expanded) it
                    if attempt:
                        raise
                    self.vectors.refresh()
            pairs = list(zip(ids, updates, strict=True))
            # The index holds what the catalog holds: the vectors the codes stand for.
            kept = [u.vector for u in updates if u.vector is not None]
            if codec is not None and kept:
                kept = list(codec.decode(np.stack(kept)))
            ok = np.asarray([i for i, u in pairs if u.vector is not None], dtype=np.int64)
            # Unreadable now: out of the live index at once. Without a new vector (a local
            # feature backfill) the indexed vector stays.
            bad = np.asarray([i for i, u in pairs if u.error is not None], dtype=np.int64)
            dim = len(kept[0]) if kept else 1
            self.vectors.apply(ok, np.stack(kept) if kept else np.zeros((0, dim), np.float32),
                               bad, self.catalog.last_commit())
        for d in batch:
            if d.error is not None:
                counts["failed"] += 1
                log.info("failed: %s: %s", d.path, d.error)
            elif d.path in new_paths:
                counts["added"] += 1
            elif d.path in edited:
                counts["updated"] += 1
            else:
                counts["completed"] += 1
        return handled

    def _compress_if_compact(self, cancel: threading.Event) -> tuple[str, ...]:
        """A compact library codes its vectors once it holds enough to learn the codes
        from (core/vector_codec.TRAIN_MIN); the index is then rebuilt from the codes, and
        the catalog file gives the space back. Returns warnings."""
        if not self.settings.compact or cancel.is_set():
            return ()
        try:
            codec = self.vectors.rows.learn()  # seconds: no write waits for it
            if codec is not None and not cancel.is_set():
                with self.lane:
                    if self.vectors.rows.code_with(codec):
                        self.vectors.refresh()  # the generation moved: rebuilt from it
                        self.vectors.mark_changed()  # a one-shot command builds its family
        except CatalogError as exc:
            log.warning("%s", exc)
            return (str(exc),)
        if not cancel.is_set() and self.catalog.vacuum_due():
            with self.lane:  # VACUUM holds the write lock: no write of ours waits on it
                why = self.catalog.vacuum()
            if why is not None:
                log.info("the catalog's freed space is given back another time: %s", why)
        return ()

    def _expand_if_standard(self) -> tuple[str, ...]:
        """A library set back to standard storage has its codes made float16 again (as
        approximate as they were: nothing is lost; new and changed photos get exact
        vectors), in one transaction."""
        if self.settings.compact or not self.catalog.vector_code_size(self.models.model_id):
            return ()
        try:
            with self.lane:
                changed = self.vectors.rows.expand()
                self.vectors.refresh()
                self.vectors.mark_changed()
        except CatalogError as exc:  # busy: the vectors stay codes until the next run
            log.warning("%s", exc)
            return (str(exc),)
        log.info("standard storage: %d coded vectors made float16 again", changed)
        return ()

    def _after_changes(self, result: dict[str, int], work: Plan) -> None:
        """Let the local-feature index catch up (in the background) with what changed."""
        if self.features is not None and (any(result.values()) or work.gone or work.moves):
            self.local.refresh_later()

    def _follow_up(self, report: ProgressCallback, cancel: threading.Event
                   ) -> tuple[str, ...]:
        """Run the later stages; one that fails leaves what is indexed as it is."""
        warnings: list[str] = []
        for stage in self.followups:
            if cancel.is_set():
                break
            try:
                stage(report, cancel)
            except ImageSearchError as exc:
                log.warning("an indexing stage failed: %s", exc)
                warnings.append(str(exc))
        return tuple(warnings)

    def _model_warning(self) -> tuple[str, ...]:
        if self.models.weights_present():
            return ()
        return (f"the model {self.models.model_id} is not installed: photos were indexed "
                "for search by image (local features) only; install it to search by "
                "description",)

    def _save_index(self) -> tuple[str, ...]:
        """Have the index file written (debounced, off the write lane); returns warnings.

        Nothing is written when nothing changed. The warnings are those of a failed save:
        of this one when saving is immediate (the CLI), else of the latest background one.
        """
        warnings = self.vectors.save_soon()
        self.warnings = list(warnings)
        return warnings


def _coded(codec: VectorCodec, updates: list[PhotoUpdate]) -> list[PhotoUpdate]:
    """``updates`` with their vectors as ``codec``'s codes (one call for the batch)."""
    rows = [i for i, u in enumerate(updates) if u.vector is not None]
    if not rows:
        return updates
    codes = codec.encode(np.stack([np.asarray(updates[i].vector) for i in rows]))
    coded = list(updates)
    for i, code in zip(rows, codes, strict=True):
        coded[i] = replace(updates[i], vector=code)
    return coded


@dataclass
class _Scan:
    """What walking the folders of one run found."""

    files: list[ScannedFile] = field(default_factory=list)
    folder_of: dict[str, int] = field(default_factory=dict)
    known: dict[str, CatalogEntry] = field(default_factory=dict)
    offline: list[Path] = field(default_factory=list)  # library folders
    parts: list[Path] = field(default_factory=list)  # subfolders of online ones


def own_data_folders(settings: Settings) -> frozenset[Path]:
    """imagesearch's own folders (catalog, index, thumbnails, weights): never indexed."""
    return frozenset(Path(os.path.abspath(p)).resolve()
                     for p in (settings.library_dir, settings.models_dir))


def _listable(folder: Path) -> bool:
    """A folder that can be listed now (what a scan needs to see into it)."""
    try:
        with os.scandir(folder) as entries:
            next(entries, None)
    except OSError:
        return False
    return True


def _owner(folders: list[FolderInfo], path: Path) -> FolderInfo | None:
    for f in folders:
        if path.is_relative_to(f.path):
            return f
    return None


def _under(path: str, folder: Path) -> bool:
    """``path`` (a string key of the scan) is ``folder`` or lies under it."""
    top = str(folder)
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _holds_any(entries: dict[str, CatalogEntry], folder: Path) -> bool:
    return any(_under(p, folder) for p in entries)
