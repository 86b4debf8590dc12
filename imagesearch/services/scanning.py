"""Walking library folders and planning what indexing must do."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imagesearch.core.imaging import hash_file, is_image_name
from imagesearch.domain import PhotoStatus
from imagesearch.storage.catalog import CatalogEntry

# Folders that hold system files, caches or other apps' thumbnails, never a user's photos.
_SKIPPED_DIRS = frozenset({
    "$recycle.bin", "system volume information", "@eadir", "#recycle", "#snapshot",
    "__macosx", "lost+found", "node_modules", "$windows.~bt", "$windows.~ws",
})
# Photo managers' libraries: their originals, previews and thumbnails belong to the app
# that made them (and would all come back as near-duplicates).
_BUNDLE_SUFFIXES = (".photoslibrary", ".photolibrary", ".migratedphotolibrary", ".aplibrary",
                    ".lrdata", ".lrlibrary", ".cocatalog", ".cosessiondb")
_HIDDEN_FLAG = getattr(stat, "UF_HIDDEN", 0)  # macOS / BSD chflags hidden
_HIDDEN_ATTRS = getattr(stat, "FILE_ATTRIBUTE_HIDDEN", 0) | getattr(
    stat, "FILE_ATTRIBUTE_SYSTEM", 0)  # Windows


@dataclass(frozen=True, slots=True)
class ScannedFile:
    """A file a walk found. Keyed by its path as a string: a rescan compares hundreds of
    thousands of them with the catalog, and making a ``Path`` of each costs more than the
    walk's system calls; ``path`` makes one for the few that are acted on."""

    key: str  # the full path, as the system listed it
    size: int
    mtime: float
    problem: str | None = None  # set for files that are there but cannot be indexed

    @property
    def path(self) -> Path:
        return Path(self.key)


@dataclass
class Subtrees:
    """What a walk leaves alone, and what it learns about the parts it cannot see.

    Photos the catalog knows under an ``offline`` subtree are kept (shown as offline),
    never taken for deleted: a drive unplugged behind a link or a mount point, or a
    folder that cannot be listed, looks empty but is not.
    """

    skip: frozenset[Path] = frozenset()  # in: judged offline before the walk; not entered
    excluded: frozenset[Path] = frozenset()  # in: imagesearch's own data; never indexed
    offline: dict[Path, str] = field(default_factory=dict)  # out: subtree -> why unseen
    mounts: dict[Path, int] = field(default_factory=dict)  # out: on another drive -> device


def _skip_dir(name: str) -> bool:
    lower = name.lower()
    return name.startswith(".") or lower in _SKIPPED_DIRS or lower.endswith(_BUNDLE_SUFFIXES)


def os_hidden(st: os.stat_result) -> bool:
    """Hidden by the system's own flag (Finder's or Explorer's), not only by a dot."""
    return bool(getattr(st, "st_flags", 0) & _HIDDEN_FLAG
                or getattr(st, "st_file_attributes", 0) & _HIDDEN_ATTRS)


def is_skipped(path: Path, root: Path, excluded: frozenset[Path] = frozenset(),
               check_flags: bool = False) -> bool:
    """Whether a walk of ``root`` leaves ``path`` out: a hidden, system or bundle folder
    on the way, imagesearch's own data, or (``check_flags``) a folder the system hides."""
    if any(path == e or path.is_relative_to(e) for e in excluded):
        return True
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return False
    if any(_skip_dir(p) for p in parts[:-1]):
        return True
    if check_flags:
        folder = path.parent
        while folder != root and folder.is_relative_to(root):
            try:
                if os_hidden(os.stat(folder)):
                    return True
            except OSError:
                pass
            folder = folder.parent
    return False


def device_of(path: Path, st: os.stat_result) -> int:
    """The drive ``path`` is on, from its stat result: what tells a mount point apart."""
    return st.st_dev


def mount_gone(path: Path, device: int) -> str | None:
    """Why a folder seen earlier on its own drive (``device``) is offline now, or None.

    Gone, or a link to nothing: unplugged or unmounted. Back on its parent's drive: what
    is there now is the bare mount point. On another device and empty: an unmounted share
    behind a link (a drive mounted again would not be empty).
    """
    try:
        st = os.stat(path)
        parent = os.stat(path.parent)
    except FileNotFoundError:
        return "not there now (unplugged or unmounted?)"
    except OSError as exc:
        return f"cannot be read now ({exc.strerror or exc})"
    now = device_of(path, st)
    if not stat.S_ISDIR(st.st_mode) or now == device_of(path.parent, parent):
        return "its drive is not mounted now"
    if now != device:
        try:
            with os.scandir(path) as entries:
                empty = next(entries, None) is None
        except OSError as exc:
            return f"cannot be read now ({exc.strerror or exc})"
        if empty:
            return "its drive is not mounted now (the folder is empty)"
    return None


def walk(root: Path, cancelled: Callable[[], bool] = lambda: False,
         subtrees: Subtrees | None = None) -> Iterator[ScannedFile]:
    """Every image-named file under ``root``: hidden, system and bundle folders skipped.

    ``subtrees`` (optional) says what to leave out and collects what could not be seen:
    folders that cannot be listed and links to missing folders (``offline``), and
    folders on another drive than their parent (``mounts``), to notice when they go.

    Symlinked folders are followed once: a (device, inode) seen before is not entered
    again, so a link loop ends. Broken links come back with a problem, not silently.
    """
    sub = subtrees if subtrees is not None else Subtrees()
    seen: set[tuple[int, int]] = set()
    try:
        st = os.stat(root)
    except OSError:
        return
    seen.add((st.st_dev, st.st_ino))
    stack = [(root, device_of(root, st))]
    while stack:
        if cancelled():
            return
        folder, device = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            sub.offline[folder] = f"cannot be read ({exc.strerror or exc})"
            continue
        for entry in entries:
            name = entry.name
            try:
                if entry.is_dir(follow_symlinks=True):
                    path = Path(entry.path)
                    if _skip_dir(name) or path in sub.skip or path in sub.excluded:
                        continue
                    target = entry.stat(follow_symlinks=True)
                    key = (target.st_dev, target.st_ino)
                    if os_hidden(target) or key in seen:
                        continue
                    seen.add(key)
                    on = device_of(path, target)
                    if on != device:
                        sub.mounts[path] = on
                    stack.append((path, on))
                    continue
            except OSError:
                pass
            if name.startswith(".") or not is_image_name(name):
                if entry.is_symlink() and not os.path.exists(entry.path):
                    # Maybe a link to a folder on a drive that is not there now.
                    sub.offline[Path(entry.path)] = ("the folder it links to is missing "
                                                     "(unplugged?)")
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                if entry.is_symlink():
                    yield ScannedFile(entry.path, 0, 0.0, "broken symbolic link")
                continue
            except OSError as exc:
                problem = "symbolic link loop" if entry.is_symlink() else \
                    f"cannot read file information: {exc.strerror or exc}"
                yield ScannedFile(entry.path, 0, 0.0, problem)
                continue
            if stat.S_ISREG(st.st_mode) and not os_hidden(st):
                yield ScannedFile(entry.path, st.st_size, st.st_mtime)


@dataclass
class Plan:
    """What a scan found to do for one folder."""

    to_embed: list[ScannedFile] = field(default_factory=list)  # new or edited files
    # Unchanged files missing a part: (file, needs the vector, needs local features).
    to_complete: list[tuple[ScannedFile, bool, bool]] = field(default_factory=list)
    problems: list[ScannedFile] = field(default_factory=list)
    moves: list[tuple[int, ScannedFile]] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)
    unchanged: int = 0
    new_count: int = 0


def _same_stat(entry: CatalogEntry, f: ScannedFile) -> bool:
    return entry.size == f.size and abs(entry.mtime - f.mtime) < 1e-6


def plan(files: list[ScannedFile], known: dict[str, CatalogEntry],
         complete: bool = True, want_vector: bool = True,
         want_features: bool = False) -> Plan:
    """Compare a folder's files with the catalog.

    Args:
        known: the catalog's entries keyed by path string (``Catalog.entries``).
        complete: the file list covers the whole folder, so catalog entries not seen
            are gone (False for a partial list, e.g. from the watcher).
        want_vector, want_features: what an indexed photo should have; an unchanged one
            missing either is planned to be completed (a backfill).
    """
    p = Plan()
    seen: set[str] = set()
    new_files: list[ScannedFile] = []
    for f in files:
        seen.add(f.key)
        entry = known.get(f.key)
        if f.problem is not None:
            if entry is not None and entry.status is PhotoStatus.FAILED \
                    and _same_stat(entry, f):
                p.unchanged += 1  # already recorded: a broken link is not rewritten every run
            else:
                p.problems.append(f)
        elif entry is None:
            new_files.append(f)
        elif not _same_stat(entry, f):
            p.to_embed.append(f)
        elif entry.status is PhotoStatus.FAILED:
            p.unchanged += 1  # retried only on request, or when the file changes
        elif entry.status is PhotoStatus.PENDING:
            p.to_embed.append(f)
        elif (want_vector and not entry.has_vector) or \
                (want_features and not entry.has_features):
            p.to_complete.append((f, want_vector and not entry.has_vector,
                                  want_features and not entry.has_features))
        else:
            p.unchanged += 1
    gone = {} if not complete else {
        path: e for path, e in known.items() if path not in seen}
    _match_moves(p, new_files, gone)
    p.gone = [e.id for e in gone.values()]
    p.new_count = len(new_files)
    p.to_embed.extend(new_files)
    return p


def _match_moves(p: Plan, new_files: list[ScannedFile], gone: dict[str, CatalogEntry]) -> None:
    """Recognise renamed or moved files by size, then content hash; they keep their id."""
    by_size: dict[int, list[tuple[str, CatalogEntry]]] = {}
    for path, e in gone.items():
        if e.content_hash and e.status is PhotoStatus.INDEXED:
            by_size.setdefault(e.size, []).append((path, e))
    if not by_size:
        return
    for f in list(new_files):
        candidates = by_size.get(f.size)
        if not candidates:
            continue
        try:
            digest = hash_file(f.path)
        except OSError:
            continue
        for i, (old_path, e) in enumerate(candidates):
            if e.content_hash == digest:
                p.moves.append((e.id, f))
                new_files.remove(f)
                del gone[old_path]
                candidates.pop(i)
                break
