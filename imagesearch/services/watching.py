"""Following library folders live: filesystem events in, debounced index updates out.

The watchdog handler only records what happened. One worker thread waits for the
events to go quiet, lets files that are still being written settle, and then hands
the changes to the indexing service in bounded batches, so a burst of thousands of
new files is indexed once each without holding anything up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from imagesearch.domain import IndexReport
from imagesearch.errors import FolderError
from imagesearch.services.indexing import IndexingService
from imagesearch.services.library import LibraryService
from imagesearch.services.scanning import ScannedFile, Subtrees, walk
from imagesearch.services.watch_queue import ChangeBatch, ChangeQueue, EventRecorder

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver, ObservedWatch

log = logging.getLogger(__name__)

BATCH_PATHS = 512  # paths per update_paths call: a burst goes in batches, each file once
RESCAN_INTERVAL_S = 60.0  # folders watchdog cannot follow are re-scanned this often
ROOT_CHECK_S = 2.0  # how often a vanished (or returned) library folder is noticed
STOP_WAIT_S = 10.0  # stop() waits this long for the threads, then leaves them be
HANDED_KEEP_S = 60.0  # how long a handed-over file's signature is remembered

ReportCallback = Callable[[IndexReport], None]
ErrorCallback = Callable[[Exception], None]


@dataclass
class _Tally:
    moved: int = 0
    removed: int = 0

    def report(self) -> IndexReport:
        return IndexReport(moved=self.moved, removed=self.removed)


def _stat_signature(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _chunks(items: list[Path], size: int) -> Iterable[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class FolderWatcher:
    """Keeps the index in step with the watched library folders while it runs.

    Args:
        debounce_s: changes are handled once no new event has come for this long
            (and at the latest ``max(10 * debounce_s, 5)`` seconds after the first).
        settle_s: a file whose size or mtime changes over this interval is still being
            written and waits for the next round.
        on_report: called on the worker thread with what each batch changed.
        on_error: called on the worker thread with anything that went wrong; watching
            goes on.
        rescan_interval_s: how often a folder that cannot be watched live is re-scanned.
    """

    def __init__(self, indexing: IndexingService, library: LibraryService,
                 debounce_s: float = 1.0, settle_s: float = 0.5,
                 on_report: ReportCallback | None = None,
                 on_error: ErrorCallback | None = None,
                 rescan_interval_s: float = RESCAN_INTERVAL_S) -> None:
        self.indexing = indexing
        self.library = library
        self.debounce_s = max(0.0, debounce_s)
        self.settle_s = max(0.0, settle_s)
        self.max_wait_s = max(10.0 * self.debounce_s, 5.0)
        self.rescan_interval_s = rescan_interval_s
        self.batch_paths = BATCH_PATHS
        self.root_check_s = ROOT_CHECK_S
        self.on_report = on_report
        self.on_error = on_error
        self._queue = ChangeQueue(self.debounce_s, self.max_wait_s, indexing.excluded)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._observer: BaseObserver | None = None
        self._handler = EventRecorder(self._queue, self._error)
        self._watch_lock = threading.RLock()
        self._life_lock = threading.Lock()  # start() and stop() from different threads
        self._roots: dict[int, Path] = {}  # every watched folder, live, polled or offline
        self._watches: dict[int, ObservedWatch] = {}
        self._polled: dict[int, float] = {}  # folder id -> when it is next re-scanned
        self._offline: set[int] = set()
        self._next_root_check = 0.0
        # What each recently handed-over file looked like: a late event for the same bytes
        # (inotify's close-write arriving after the batch left, on a busy machine) is not
        # handed over again. Kept for a minute.
        self._handed: dict[Path, tuple[tuple[int, int], float]] = {}

    # Life cycle ----------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._worker is not None and self._worker.is_alive() and not self._stop.is_set()

    def start(self, reconcile: bool = False) -> None:
        """Start following the library's watched folders (no-op if already running).

        Args:
            reconcile: first re-scan the watched folders, to catch what changed while
                nothing was watching. The watches are in place before that scan starts,
                so nothing falls between the two.
        """
        from watchdog.observers import Observer

        with self._life_lock:
            if self.is_running:
                return
            self._stop = threading.Event()
            self._queue.clear()
            observer = Observer()
            observer.daemon = True
            observer.start()
            self._observer = observer
            self.refresh()
            self._worker = threading.Thread(target=self._run, args=(reconcile,),
                                            name="imagesearch-watcher", daemon=True)
            self._worker.start()

    def stop(self, timeout_s: float = STOP_WAIT_S) -> bool:
        """Stop watching and wait, at most ``timeout_s``, for its threads to end.

        A batch being embedded is cut short after its current model batch; what was
        left is picked up by the next start-up's reconciliation scan. Returns False if a
        thread is still busy after the wait (stuck reading a stalled network share, say):
        it is a daemon thread, left to end on its own, so quitting never hangs on it.
        """
        with self._life_lock:
            self._stop.set()
            self._queue.wake()
            deadline = time.monotonic() + timeout_s
            observer, self._observer = self._observer, None
            if observer is not None:
                observer.stop()
                if observer.is_alive():
                    observer.join(max(0.0, deadline - time.monotonic()))
            worker, self._worker = self._worker, None
            if worker is not None and worker is not threading.current_thread():
                worker.join(max(0.0, deadline - time.monotonic()))
            stuck = [t.name for t in (observer, worker)
                     if t is not None and t is not threading.current_thread() and t.is_alive()]
            if stuck:
                log.warning("stopped watching, but %s did not finish within %g s; leaving "
                            "it to end on its own", ", ".join(stuck), timeout_s)
            with self._watch_lock:
                self._watches.clear()
                self._polled.clear()
                self._offline.clear()
                self._roots.clear()
                self._queue.roots = ()
            return not stuck

    def refresh(self) -> None:
        """Re-read the library's folders: watch new or re-enabled ones, drop the others."""
        observer = self._observer
        if observer is None or self._stop.is_set():
            return
        wanted = {f.id: f for f in self.library.folders() if f.watched}
        with self._watch_lock:
            for fid in list(self._roots):
                if fid not in wanted or wanted[fid].path != self._roots[fid]:
                    self._forget(fid)
            for fid, folder in wanted.items():
                if fid not in self._roots:
                    self._roots[fid] = folder.path
                    self._queue.roots = tuple(self._roots.values())
                    self._follow(fid, folder.path)

    def watched_paths(self) -> list[Path]:
        """The folders being followed now (live, or by periodic re-scan as a fallback)."""
        with self._watch_lock:
            return sorted(self._roots[fid] for fid in self._roots
                          if fid in self._watches or fid in self._polled)

    # Scheduling ----------------------------------------------------------------------------

    def _follow(self, fid: int, path: Path) -> None:
        observer = self._observer
        if observer is None:
            return
        if not path.is_dir():
            self._offline.add(fid)
            return
        try:
            watch = observer.schedule(self._handler, str(path), recursive=True)
        except OSError as exc:
            # Typically the inotify watch limit: fall back to re-scanning now and then.
            self._polled[fid] = time.monotonic() + self.rescan_interval_s
            err = FolderError(f"cannot follow {path} live ({exc.strerror or exc}); "
                              f"re-scanning it every {self.rescan_interval_s:g} s instead")
            err.__cause__ = exc
            self._error(err)
            return
        self._watches[fid] = watch

    def _unschedule(self, fid: int) -> None:
        watch = self._watches.pop(fid, None)
        observer = self._observer
        if watch is not None and observer is not None:
            with contextlib.suppress(KeyError, RuntimeError):  # already gone with its folder
                observer.unschedule(watch)

    def _forget(self, fid: int) -> None:
        self._unschedule(fid)
        self._polled.pop(fid, None)
        self._offline.discard(fid)
        self._roots.pop(fid, None)
        self._queue.roots = tuple(self._roots.values())

    # The worker ----------------------------------------------------------------------------

    def _run(self, reconcile: bool) -> None:
        if reconcile:
            self._guarded(self._reconcile)
        tick = max(0.02, min(0.25, self.debounce_s / 4))
        while not self._stop.is_set():
            self._queue.wait(tick)
            if self._stop.is_set():
                break
            now = time.monotonic()
            self._guarded(partial(self._check_roots, now))
            self._guarded(partial(self._rescan_polled, now))
            batch = self._queue.take_ready(now)
            if batch is not None:
                self._guarded(partial(self._process, batch))

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # the worker must outlive any one failure
            self._error(exc)

    def _process(self, batch: ChangeBatch) -> None:
        tally = _Tally()
        updates: dict[Path, None] = {}
        removals: dict[Path, None] = {}
        handled: set[Path] = set()
        for src, dst, is_dir in batch.moves:
            if self._stop.is_set():
                return
            try:
                self._apply_move(src, dst, is_dir, updates, removals, handled, tally)
            except Exception as exc:  # one bad move must not lose the rest
                self._error(exc)
        for path in batch.touched:  # a moved file touched again is judged by its stat
            if path.is_dir():
                if path in batch.walk_dirs:
                    updates.update(dict.fromkeys(f.path for f in self._walk(path)))
            elif os.path.lexists(path):
                updates[path] = None  # a file, or a link update_paths will judge
            else:
                removals[path] = None
        if self._stop.is_set():
            return  # the next start-up's reconciliation scan settles the rest
        for src, dst, is_dir in batch.moves:  # what was moved may come back as it was
            self._handed.pop(src, None)
            self._handed.pop(dst, None)
            if is_dir:
                self._handed = {p: v for p, v in self._handed.items()
                                if not (p.is_relative_to(src) or p.is_relative_to(dst))}
        for path in removals:
            self._handed.pop(path, None)
        self._remove(list(removals), tally)
        if tally.moved or tally.removed:
            self._emit(tally.report())
        self._update(list(updates))

    def _apply_move(self, src: Path, dst: Path, is_dir: bool, updates: dict[Path, None],
                    removals: dict[Path, None], handled: set[Path], tally: _Tally) -> None:
        if dst in handled:
            return  # a file already followed as part of its folder's move
        handled.add(dst)
        if is_dir and dst.is_dir():
            # Each file keeps its identity; whatever else was under src is gone.
            for f in self._walk(dst):
                if f.path in handled:
                    continue
                handled.add(f.path)
                self._move_file(dst_file=f.path, src_file=src / f.path.relative_to(dst),
                                updates=updates, removals=removals, tally=tally)
            if not self._stop.is_set():
                # Only a complete walk says what is left under src: a walk cut short by
                # stop() must not forget photos that simply were not followed yet.
                removals[src] = None
        elif not is_dir and os.path.isfile(dst):
            self._move_file(src, dst, updates, removals, tally)
        else:
            removals[src] = None
            if os.path.lexists(dst):
                updates[dst] = None
            else:
                removals[dst] = None

    def _walk(self, folder: Path) -> Iterable[ScannedFile]:
        return walk(folder, self._stop.is_set, Subtrees(excluded=self.indexing.excluded))

    def _move_file(self, src_file: Path, dst_file: Path, updates: dict[Path, None],
                   removals: dict[Path, None], tally: _Tally) -> None:
        if self.indexing.move_path(src_file, dst_file):
            tally.moved += 1
        else:
            updates[dst_file] = None
            removals[src_file] = None

    def _remove(self, paths: list[Path], tally: _Tally) -> None:
        if not paths:
            return
        roots = self._queue.roots
        present: list[Path] = []
        for path in paths:
            root = next((r for r in roots if path == r or path.is_relative_to(r)), None)
            if root is not None and not root.is_dir():
                # The whole library folder is gone (unplugged, unmounted): it goes offline
                # with its photos kept, never emptied. The root check reports it.
                self._next_root_check = 0.0
                continue
            present.append(path)
        if present:
            tally.removed += self.indexing.remove_paths(present)

    def _update(self, paths: list[Path]) -> None:
        if not paths:
            return
        before = {p: _stat_signature(p) for p in paths}
        if self.settle_s and self._stop.wait(self.settle_s):
            return
        stable: list[Path] = []
        growing: list[Path] = []
        for path, sig in before.items():
            now_sig = _stat_signature(path)
            if sig is not None and now_sig is not None and now_sig != sig:
                growing.append(path)
            else:
                stable.append(path)  # unchanged, or gone: update_paths forgets gone ones
        if growing:
            self._queue.requeue(growing)
        stable = self._not_handed_yet(stable)
        for chunk in _chunks(stable, self.batch_paths):
            if self._stop.is_set():
                return
            try:
                self._emit(self.indexing.update_paths(chunk, cancel=self._stop))
            except Exception as exc:  # the next batch still gets its turn
                self._error(exc)

    def _not_handed_yet(self, paths: list[Path]) -> list[Path]:
        """Drop the paths whose file is exactly as it was when last handed over."""
        now = time.monotonic()
        self._handed = {p: v for p, v in self._handed.items() if now - v[1] < HANDED_KEEP_S}
        fresh: list[Path] = []
        for path in paths:
            sig = _stat_signature(path)
            seen = self._handed.get(path)
            if sig is not None and seen is not None and seen[0] == sig:
                continue  # unchanged since update_paths saw it
            fresh.append(path)
            if sig is not None:
                self._handed[path] = (sig, now)
        return fresh

    # Folders that vanish, return, or cannot be watched --------------------------------------

    def _check_roots(self, now: float) -> None:
        if now < self._next_root_check:
            return
        self._next_root_check = now + self.root_check_s
        changed: list[int] = []
        with self._watch_lock:
            for fid, root in list(self._roots.items()):
                if fid in self._offline and root.is_dir():
                    self._offline.discard(fid)
                    self._follow(fid, root)
                    changed.append(fid)
                elif fid not in self._offline and not root.is_dir():
                    self._unschedule(fid)
                    self._polled.pop(fid, None)
                    self._offline.add(fid)
                    changed.append(fid)
            for fid, root in list(self._roots.items()):
                if fid in self._offline or fid in changed \
                        or not self.indexing.subtrees_changed(fid):
                    continue
                # A drive inside went away or came back. One that came back is new inodes
                # the live watch does not see: the folder is watched afresh.
                if fid in self._watches:
                    self._unschedule(fid)
                    self._follow(fid, root)
                changed.append(fid)
        if changed:
            # run() marks a missing folder or drive offline (photos kept) and reconciles
            # one that came back.
            self._emit(self.indexing.run(changed, cancel=self._stop))

    def _reconcile(self) -> None:
        with self._watch_lock:
            live = [fid for fid in self._roots if fid not in self._offline]
        if live:
            self._emit(self.indexing.run(live, cancel=self._stop))

    def _rescan_polled(self, now: float) -> None:
        with self._watch_lock:
            due = [fid for fid, t in self._polled.items() if t <= now]
            for fid in due:
                self._polled[fid] = now + self.rescan_interval_s
        if due:
            self._emit(self.indexing.run(due, cancel=self._stop))

    # Callbacks -----------------------------------------------------------------------------

    def _emit(self, report: IndexReport) -> None:
        changed = (report.added or report.updated or report.moved or report.removed
                   or report.failed or report.offline_folders)
        if not changed or self.on_report is None:
            return
        try:
            self.on_report(report)
        except Exception:
            log.exception("the watcher's report callback failed")

    def _error(self, exc: Exception) -> None:
        if self.on_error is None:
            log.error("watching: %s", exc, exc_info=exc)
            return
        try:
            self.on_error(exc)
        except Exception:
            log.exception("the watcher's error callback failed")
