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


@dataclass(frozen=True, slots=True)
class ScannedFile:
    path: Path
    size: int
    mtime: float
    problem: str | None = None  # set for files that are there but cannot be indexed


def _skip_dir(name: str) -> bool:
    return name.startswith(".") or name.lower() in _SKIPPED_DIRS


def walk(root: Path, cancelled: Callable[[], bool] = lambda: False,
         unreadable: list[Path] | None = None) -> Iterator[ScannedFile]:
    """Every image-named file under ``root``: hidden and system folders skipped.

    Folders that cannot be listed are appended to ``unreadable``: what the catalog
    knows under them must be left alone, not taken for deleted.

    Symlinked folders are followed once: a (device, inode) seen before is not entered
    again, so a link loop ends. Broken links come back with a problem, not silently.
    """
    seen: set[tuple[int, int]] = set()
    try:
        st = os.stat(root)
    except OSError:
        return
    seen.add((st.st_dev, st.st_ino))
    stack = [root]
    while stack:
        if cancelled():
            return
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            if unreadable is not None:
                unreadable.append(folder)
            continue
        for entry in entries:
            name = entry.name
            try:
                if entry.is_dir(follow_symlinks=True):
                    if _skip_dir(name):
                        continue
                    target = entry.stat(follow_symlinks=True)
                    key = (target.st_dev, target.st_ino)
                    if key not in seen:
                        seen.add(key)
                        stack.append(Path(entry.path))
                    continue
            except OSError:
                pass
            if name.startswith(".") or not is_image_name(name):
                continue
            path = Path(entry.path)
            try:
                st = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                if entry.is_symlink():
                    yield ScannedFile(path, 0, 0.0, "broken symbolic link")
                continue
            except OSError as exc:
                problem = "symbolic link loop" if entry.is_symlink() else \
                    f"cannot read file information: {exc.strerror or exc}"
                yield ScannedFile(path, 0, 0.0, problem)
                continue
            if stat.S_ISREG(st.st_mode):
                yield ScannedFile(path, st.st_size, st.st_mtime)


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


def plan(files: list[ScannedFile], known: dict[Path, CatalogEntry],
         complete: bool = True, want_vector: bool = True,
         want_features: bool = False) -> Plan:
    """Compare a folder's files with the catalog.

    Args:
        complete: the file list covers the whole folder, so catalog entries not seen
            are gone (False for a partial list, e.g. from the watcher).
        want_vector, want_features: what an indexed photo should have; an unchanged one
            missing either is planned to be completed (a backfill).
    """
    p = Plan()
    seen: set[Path] = set()
    new_files: list[ScannedFile] = []
    for f in files:
        seen.add(f.path)
        entry = known.get(f.path)
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


def _match_moves(p: Plan, new_files: list[ScannedFile], gone: dict[Path, CatalogEntry]) -> None:
    """Recognise renamed or moved files by size, then content hash; they keep their id."""
    by_size: dict[int, list[tuple[Path, CatalogEntry]]] = {}
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
