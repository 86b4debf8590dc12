"""The watcher's intake: filesystem events coalesced into a debounced queue of changes.

Watchdog calls in on its own thread; recording an event is a dictionary update under
a lock, so a burst of thousands of files never holds watchdog up. The worker thread
takes out what has been quiet long enough.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from imagesearch.core.imaging import is_image_name
from imagesearch.services.scanning import _skip_dir, is_skipped

# Reading a photo to index it opens it: those events must never feed back into the queue.
_IGNORED_EVENTS = frozenset({"opened", "closed_no_write"})


def is_followed(path: Path, roots: Iterable[Path], is_dir: bool,
                excluded: frozenset[Path] = frozenset()) -> bool:
    """Inside a root, not hidden, a system or bundle folder or imagesearch's own data
    (its thumbnails change all the time), and image-named if a file."""
    for root in roots:
        if path == root:
            return is_dir
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            continue
        if is_skipped(path, root, excluded):
            return False
        name = parts[-1]
        if is_dir:
            return not _skip_dir(name)
        return not name.startswith(".") and is_image_name(name)
    return False


@dataclass
class ChangeBatch:
    """Changes ready to handle. ``touched``: created, modified or deleted; the disk says
    which. ``walk_dirs``: folders created or moved in, whose files are all new."""

    touched: list[Path]
    walk_dirs: set[Path]
    moves: list[tuple[Path, Path, bool]]  # (src, dst, is_dir), oldest first


@dataclass
class _Pending:
    touched: dict[Path, float] = field(default_factory=dict)  # path -> time of last event
    walk_dirs: set[Path] = field(default_factory=set)
    moves: dict[Path, tuple[Path, bool, float]] = field(default_factory=dict)  # dst -> src
    first: float = 0.0  # time of the oldest unhandled event
    last: float = 0.0  # time of the newest event

    def __bool__(self) -> bool:
        return bool(self.touched or self.moves)


class ChangeQueue:
    """Thread-safe pending map of changes; the newest event for a path wins.

    Args:
        debounce_s: a path is ready once it has had no event for this long, and the
            queue hands out changes once no event at all has come for this long...
        max_wait_s: ...or once the oldest change has waited this long, so a steady
            trickle of events cannot hold everything back.
    """

    def __init__(self, debounce_s: float, max_wait_s: float,
                 excluded: frozenset[Path] = frozenset()) -> None:
        self.debounce_s = debounce_s
        self.max_wait_s = max_wait_s
        self.excluded = excluded
        self.roots: tuple[Path, ...] = ()  # replaced whole, read without a lock
        self._cond = threading.Condition()
        self._p = _Pending()

    def clear(self) -> None:
        with self._cond:
            self._p = _Pending()

    def wait(self, timeout: float) -> None:
        """Sleep until an event arrives, wake() is called, or ``timeout`` passes."""
        with self._cond:
            self._cond.wait(timeout)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def record(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind in _IGNORED_EVENTS or (event.is_directory and kind in ("modified", "attrib")):
            return
        src = Path(os.fsdecode(event.src_path))
        is_dir = event.is_directory
        now = time.monotonic()
        with self._cond:
            p = self._p
            was_empty = not p
            if kind == "moved":
                self._record_move(src, Path(os.fsdecode(event.dest_path)), is_dir, now)
            elif is_followed(src, self.roots, is_dir, self.excluded):
                p.touched[src] = now
                if is_dir and kind == "created":
                    p.walk_dirs.add(src)
            else:
                return
            if was_empty:
                p.first = now
            p.last = now
            self._cond.notify()

    def _record_move(self, src: Path, dst: Path, is_dir: bool, now: float) -> None:
        p = self._p
        src_ok = is_followed(src, self.roots, is_dir, self.excluded)
        dst_ok = is_followed(dst, self.roots, is_dir, self.excluded)
        if src_ok and dst_ok and src not in p.touched:
            earlier = p.moves.pop(src, None)  # a -> b then b -> c is a -> c
            origin = earlier[0] if earlier is not None else src
            p.moves[dst] = (origin, is_dir, now)
            p.touched.pop(dst, None)  # whatever was at dst is replaced by the move
            return
        # Moved in from outside view (a new file), out of view (gone), or a file not yet
        # handled: treat both ends as plain changes; the disk says what they are now.
        if src_ok:
            p.touched[src] = now
        if dst_ok:
            p.touched[dst] = now
            if is_dir:
                p.walk_dirs.add(dst)

    def take_ready(self, now: float) -> ChangeBatch | None:
        """The changes whose paths have been quiet for debounce_s, once it is time."""
        with self._cond:
            p = self._p
            if not p:
                return None
            if now - p.last < self.debounce_s and now - p.first < self.max_wait_s:
                return None
            cutoff = now - self.debounce_s
            touched = [path for path, t in p.touched.items() if t <= cutoff]
            moves = [(dst, m) for dst, m in p.moves.items() if m[2] <= cutoff]
            if not touched and not moves:
                return None
            for path in touched:
                del p.touched[path]
            for dst, _ in moves:
                del p.moves[dst]
            taken = set(touched)
            walk_dirs = {d for d in p.walk_dirs if d in taken}
            p.walk_dirs -= walk_dirs
            moves.sort(key=lambda item: item[1][2])
            if p:
                p.first = min([*p.touched.values(), *(m[2] for m in p.moves.values())])
            return ChangeBatch(touched, walk_dirs, [(m[0], dst, m[1]) for dst, m in moves])

    def requeue(self, paths: Iterable[Path]) -> None:
        """Put paths back as if just touched (e.g. a file still being written)."""
        now = time.monotonic()
        with self._cond:
            p = self._p
            was_empty = not p
            for path in paths:
                p.touched[path] = now
            if was_empty:
                p.first = now
            p.last = max(p.last, now)


class EventRecorder(FileSystemEventHandler):
    """The watchdog handler: records each event and returns at once."""

    def __init__(self, queue: ChangeQueue, on_error: Callable[[Exception], None]) -> None:
        super().__init__()
        self._queue = queue
        self._on_error = on_error

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._queue.record(event)
        except Exception as exc:  # an odd event must not kill watchdog's thread
            self._on_error(exc)
