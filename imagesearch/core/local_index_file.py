"""The ASMK index's files: a base of flat arrays that is memory-mapped, and a journal.

The base file is "ISAK", its format, a JSON header padded to 4 KiB (each array's dtype,
shape and offset, the base's token, a checksum), then the arrays at 64-byte boundaries.
It is written to a temporary file, synced and renamed, so a crash leaves the old base or
the new one, never a torn one. The checksum covers the header itself and every array but
the postings' own: at a million photos those are gigabytes, and checking them would read
them all at every open, where a memory map reads only what a query touches. A damaged
posting can point at a wrong photo but never outside the index (core/postings.py bounds
every row it reads).

The journal beside it (".journal") holds the changes made since the base was written,
appended as checksummed records (core/index_file.append_records), and names the base it
extends by its token. Saving a change costs the change's bytes, not the library's.

Two processes may share a library (the app and the command line). Whoever writes the
files holds a lock file beside them (``writing``) and first checks that the base on disk
is still the one it extends, taking in what the other process appended to its journal
meanwhile (``InvertedFile._extends`` and ``_catch_up``); otherwise it writes a base of
its own, since appending its changes to another process's base would mix two
vocabularies.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import struct
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import filelock
import numpy as np
import xxhash

from imagesearch.core.index_file import (
    RECORD_HEAD,
    append_records,
    read_records,
    write_index_file,
)
from imagesearch.errors import IndexFileError, IndexUnavailableError

log = logging.getLogger(__name__)

_MAGIC = b"ISAK"
FORMAT = 2  # 2: the checksum covers the header too; 1 is still read
_READABLE = (1, FORMAT)
_HEAD = 4096  # bytes reserved for the magic, format and JSON header
_ALIGN = 64
# Arrays too large to checksum at every open (see the module's docstring).
UNCHECKED = frozenset({"rows", "codes"})
# A memory map keeps a file open; Windows cannot then replace it. There the base is read.
MAP_FILES = os.name == "posix"

_JOURNAL_MAGIC = b"ISAJ"
_JOURNAL_FORMAT = 1
_CHANGE = struct.Struct("<QQQ")  # photos removed, photos added, their postings
# How long a writer waits for another process's write (a base of a million photos is
# written in about a minute), and a reader before it reads without the lock. On Windows
# a reader never reads without it (a file open there cannot be replaced, so the writer's
# rename would fail): it gives up instead, and the index is opened at a later search.
WRITE_WAIT_S = 120.0
READ_WAIT_S = 10.0


def journal_path(base: Path) -> Path:
    return base.with_name(base.name + ".journal")


def lock_path(base: Path) -> Path:
    return base.with_name(base.name + ".lock")


# What flock answers where a file system has no locks (ENOTSUP is macOS's number).
NO_LOCK_ERRNOS = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP,
                       getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)})
_WARNED: set[Path] = set()  # folders whose lack of locks was logged


def _lock(base: Path, wait_s: float) -> filelock.BaseFileLock | None:
    """``base``'s lock, acquired (an OS file lock, released if the process dies); None
    where the file system has no locks (some network mounts): then nothing is locked.
    (filelock would fall back to a marker file there, which a crashed process leaves
    behind, and every later save would wait for it in vain.)

    Raises:
        IndexUnavailableError: another process held it for ``wait_s``.
        IndexFileError: it cannot be made (a read-only folder, say).
    """
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(lock_path(base), timeout=wait_s, fallback_to_soft=False)
        lock.acquire()
    except filelock.Timeout as exc:
        raise IndexUnavailableError(f"another process is writing {base.name}") from exc
    except (NotImplementedError, OSError) as exc:
        # filelock raises NotImplementedError where flock() does not exist (with the
        # soft fallback off); some file systems answer flock() with an errno instead.
        if isinstance(exc, OSError) and exc.errno not in NO_LOCK_ERRNOS:
            raise IndexFileError(f"cannot lock the local-feature index {base}: "
                                 f"{exc.strerror or exc}") from exc
        if base.parent not in _WARNED:
            _WARNED.add(base.parent)
            log.warning("the file system of %s has no file locks: two processes saving "
                        "the local-feature index at once may overwrite each other's "
                        "changes (the next refresh finds them again)", base.parent)
        return None
    return lock


@contextlib.contextmanager
def writing(base: Path) -> Iterator[None]:
    """Hold the lock of ``base``'s files while writing them.

    Raises:
        IndexFileError: another process held it for WRITE_WAIT_S, or it cannot be made.
    """
    lock = _lock(base, WRITE_WAIT_S)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def reading(base: Path) -> Iterator[None]:
    """The lock while a base and its journal are read together, if it can be had within
    READ_WAIT_S; without it otherwise (a reader then may see a journal of another base,
    which ``read_journal`` ignores: the index only lacks changes a refresh brings back).

    Raises:
        IndexUnavailableError: on Windows, another process held it for READ_WAIT_S.
    """
    try:
        lock = _lock(base, READ_WAIT_S)
    except IndexUnavailableError:
        if not MAP_FILES:
            raise
        lock = None
    except IndexFileError:  # no lock can be made here: read as it is
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


class BaseWriter:
    """A base file being written: arrays laid out in a temporary file beside ``path``,
    filled through writable maps, then committed (header, sync, rename)."""

    def __init__(self, path: Path, shapes: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
        self.path = path
        self.layout: dict[str, dict[str, Any]] = {}
        at = _HEAD
        for name, (shape, dtype) in shapes.items():
            dtype = np.dtype(dtype)
            at = -(-at // _ALIGN) * _ALIGN
            self.layout[name] = {"dtype": dtype.str, "shape": list(shape), "offset": at}
            at += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
            self.tmp = Path(name)
            with os.fdopen(fd, "wb") as f:
                # Space reserved now: a full disk is an error here, not a crash (SIGBUS)
                # when a page of the map is written later.
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(f.fileno(), 0, at)
                else:
                    f.truncate(at)
        except OSError as exc:
            if hasattr(self, "tmp"):
                with contextlib.suppress(OSError):
                    self.tmp.unlink()
            raise IndexFileError(f"could not write the local-feature index {path}: "
                                 f"{exc.strerror or exc}") from exc
        self._maps: dict[str, np.ndarray] = {}

    def array(self, name: str) -> np.ndarray:
        """The named array, writable, backed by the file."""
        if name not in self._maps:
            spec = self.layout[name]
            shape = tuple(spec["shape"])
            if int(np.prod(shape, dtype=np.int64)) == 0:
                self._maps[name] = np.zeros(shape, np.dtype(spec["dtype"]))
            else:
                try:
                    self._maps[name] = np.memmap(self.tmp, np.dtype(spec["dtype"]), "r+",
                                                 spec["offset"], shape)
                except (OSError, ValueError) as exc:  # out of address space, a lost file
                    raise IndexFileError(f"could not write the local-feature index "
                                         f"{self.path}: {exc}") from exc
        return self._maps[name]

    def allocate(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """``core/postings.Allocate`` for arrays laid out beforehand."""
        out = self.array(name)
        if out.shape != tuple(shape) or out.dtype != np.dtype(dtype):
            raise ValueError(f"{name} was laid out as {out.shape} {out.dtype}")
        return out

    def commit(self, meta: dict[str, Any]) -> str:
        """Write the header and move the file into place; returns the base's token."""
        token = uuid.uuid4().hex
        try:
            for name in self.layout:
                out = self.array(name)
                if isinstance(out, np.memmap):
                    out.flush()
            header = {**meta, "token": token, "layout": self.layout}
            digest = _checksum(header, {name: self.array(name) for name in self.layout})
            head = json.dumps({**header, "checksum": digest}).encode()
            if 12 + len(head) > _HEAD:
                raise IndexFileError("the local-feature index header is too large")
            self._maps.clear()  # unmap before the rename (Windows)
            with open(self.tmp, "r+b") as f:
                f.write(_MAGIC + struct.pack("<II", FORMAT, len(head)) + head)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.abort()
            raise IndexFileError(f"could not write the local-feature index {self.path}: "
                                 f"{exc.strerror or exc}") from exc
        return token

    def abort(self) -> None:
        self._maps.clear()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


def _checksum(header: dict[str, Any], arrays: dict[str, np.ndarray],
              version: int = FORMAT) -> str:
    """Over the header (but its checksum; format 1 left the header out) and the arrays
    but the UNCHECKED ones."""
    h = xxhash.xxh3_64()
    if version >= 2:
        h.update(json.dumps({key: value for key, value in header.items()
                             if key != "checksum"}, sort_keys=True).encode())
    for name in sorted(arrays):
        if name not in UNCHECKED:
            h.update(name.encode())
            h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class BaseFile:
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def token(self) -> str:
        return str(self.meta["token"])


def _parse_head(start: bytes, path: Path) -> dict[str, Any]:
    """The header (with the file's format as "file_format"), unchecked."""
    if len(start) < 12 or start[:4] != _MAGIC:
        raise IndexFileError(f"{path} is not an imagesearch local-feature index")
    version, n = struct.unpack("<II", start[4:12])
    if version not in _READABLE:
        raise IndexFileError(f"{path} has format {version}, expected {FORMAT}")
    try:
        meta = json.loads(start[12:12 + n])
    except ValueError as exc:
        raise IndexFileError(f"{path} has a damaged header") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("layout"), dict):
        raise IndexFileError(f"{path} has a damaged header")
    return {**meta, "file_format": version}


def read_token(path: Path) -> str | None:
    """The token of the base at ``path`` from its header alone (unchecked); None if
    there is no readable base there."""
    try:
        with open(path, "rb") as f:
            return str(_parse_head(f.read(_HEAD), path)["token"])
    except (OSError, IndexFileError, KeyError):
        return None


def read_base(path: Path, mapped: bool = MAP_FILES) -> BaseFile:
    """The base's header and arrays, the postings memory-mapped (read-only) when
    ``mapped``. One open file: a base another process puts in its place meanwhile is
    never half read.

    Raises:
        IndexFileError: missing, not such a file, another format, or damaged.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            meta = _parse_head(f.read(_HEAD), path)
            arrays = {name: _read_array(f, size, spec, mapped and name in UNCHECKED, path)
                      for name, spec in meta["layout"].items()}
    except OSError as exc:
        raise IndexFileError(f"cannot read the local-feature index {path}: "
                             f"{exc.strerror or exc}") from exc
    except MemoryError as exc:
        raise IndexUnavailableError(f"not enough memory to read {path}") from exc
    except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError) as exc:
        raise IndexFileError(f"{path} has a damaged header") from exc
    version = meta.pop("file_format")
    if _checksum(meta, arrays, version) != meta.get("checksum"):
        raise IndexFileError(f"{path} is damaged (checksum mismatch)")
    return BaseFile(meta, arrays)


def _read_array(f: BinaryIO, size: int, spec: dict[str, Any], mapped: bool,
                path: Path) -> np.ndarray:
    dtype, offset = np.dtype(spec["dtype"]), int(spec["offset"])
    shape = tuple(int(d) for d in spec["shape"])
    if dtype.hasobject or offset < _HEAD or any(d < 0 for d in shape):
        raise ValueError("a damaged layout")
    count = math.prod(shape)  # Python's integers: a damaged shape cannot wrap around
    if offset + count * dtype.itemsize > size:
        raise IndexFileError(f"{path} is truncated")
    if count == 0:
        return np.zeros(shape, dtype)
    if mapped:  # the map holds the file open: it outlives ``f``, and a rename of the path
        return np.memmap(f, dtype, "r", offset, shape)
    f.seek(offset)
    return np.fromfile(f, dtype, count).reshape(shape)


# The journal -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class JournalEntry:
    """Photos removed, then photos (re)added with their postings in photo order."""

    removed: np.ndarray  # int64
    added: np.ndarray  # int64
    versions: np.ndarray  # |S32
    counts: np.ndarray  # uint32: each added photo's words
    words: np.ndarray  # uint16
    codes: np.ndarray  # P x 2 uint64


def _journal_head(token: str) -> bytes:
    name = token.encode("ascii")
    return _JOURNAL_MAGIC + struct.pack("<II", _JOURNAL_FORMAT, len(name)) + name


def start_journal(path: Path, token: str) -> int:
    """An empty journal for the base ``token``, replacing any other atomically; returns
    its size."""
    head = _journal_head(token)
    write_index_file(path, head)
    return len(head)


def append_journal(path: Path, entry: JournalEntry) -> int:
    """Append one entry and sync; returns the journal's size.

    Raises:
        IndexFileError: it could not be written.
    """
    payload = (_CHANGE.pack(len(entry.removed), len(entry.added), len(entry.words))
               + np.ascontiguousarray(entry.removed, "<i8").tobytes()
               + np.ascontiguousarray(entry.added, "<i8").tobytes()
               + np.ascontiguousarray(entry.versions, "S32").tobytes()
               + np.ascontiguousarray(entry.counts, "<u4").tobytes()
               + np.ascontiguousarray(entry.words, "<u2").tobytes()
               + np.ascontiguousarray(entry.codes, "<u8").tobytes())
    return append_records(path, [payload], "the local-feature index's changes")


def read_journal(path: Path, token: str) -> tuple[list[JournalEntry], int]:
    """The journal's intact entries for the base ``token``, and the journal's size when
    it can be extended (it is this base's and was read to its end with nothing torn),
    else 0. The size is what was read: a record another process appends meanwhile is
    neither in the entries nor counted."""
    head = _journal_head(token)
    payloads, clean = read_records(path, head)
    entries: list[JournalEntry] = []
    for payload in payloads:
        entry = _decode(payload)
        if entry is None:
            return entries, 0
        entries.append(entry)
    size = len(head) + sum(RECORD_HEAD + len(payload) for payload in payloads)
    return entries, size if clean else 0


def _decode(payload: memoryview) -> JournalEntry | None:
    if len(payload) < _CHANGE.size:
        return None
    removed, added, postings = _CHANGE.unpack_from(payload)
    sizes = [("<i8", removed, 8), ("<i8", added, 8), ("S32", added, 32), ("<u4", added, 4),
             ("<u2", postings, 2), ("<u8", 2 * postings, 8)]
    if len(payload) != _CHANGE.size + sum(n * width for _, n, width in sizes):
        return None
    parts = []
    at = _CHANGE.size
    for dtype, n, width in sizes:
        parts.append(np.frombuffer(payload, dtype, n, at).copy())
        at += n * width
    counts = parts[3].astype(np.uint32)
    if int(counts.sum()) != postings:
        return None
    return JournalEntry(parts[0].astype(np.int64), parts[1].astype(np.int64), parts[2],
                        counts, parts[4].astype(np.uint16),
                        parts[5].astype(np.uint64).reshape(-1, 2))
