"""The ASMK index's files: a base of flat arrays that is memory-mapped, and a journal.

The base file is "ISAK", its format, a JSON header padded to 4 KiB (each array's dtype,
shape and offset, the base's token, a checksum), then the arrays at 64-byte boundaries.
It is written to a temporary file, synced and renamed, so a crash leaves the old base or
the new one, never a torn one. The checksum covers every array but the postings' own:
at a million photos those are gigabytes, and checking them would read them all at every
open, where a memory map reads only what a query touches. A damaged posting can point at
a wrong photo but never outside the index (core/postings.py bounds every row it reads).

The journal beside it (".journal") holds the changes made since the base was written,
appended as checksummed records (core/index_file.append_records), and names the base it
extends by its token. Saving a change costs the change's bytes, not the library's.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from imagesearch.core.index_file import append_records, read_records, write_index_file
from imagesearch.errors import IndexFileError

_MAGIC = b"ISAK"
FORMAT = 1
_HEAD = 4096  # bytes reserved for the magic, format and JSON header
_ALIGN = 64
# Arrays too large to checksum at every open (see the module's docstring).
UNCHECKED = frozenset({"rows", "codes"})
# A memory map keeps a file open; Windows cannot then replace it. There the base is read.
MAP_FILES = os.name == "posix"

_JOURNAL_MAGIC = b"ISAJ"
_JOURNAL_FORMAT = 1
_CHANGE = struct.Struct("<QQQ")  # photos removed, photos added, their postings


def journal_path(base: Path) -> Path:
    return base.with_name(base.name + ".journal")


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
                self._maps[name] = np.memmap(self.tmp, np.dtype(spec["dtype"]), "r+",
                                             spec["offset"], shape)
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
            digest = _checksum({name: self.array(name) for name in self.layout})
            head = json.dumps({**meta, "token": token, "layout": self.layout,
                               "checksum": digest}).encode()
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


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    h = xxhash.xxh3_64()
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


def read_base(path: Path, mapped: bool = MAP_FILES) -> BaseFile:
    """The base's header and arrays, the postings memory-mapped (read-only) when
    ``mapped``.

    Raises:
        IndexFileError: missing, not such a file, another format, or damaged.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            start = f.read(_HEAD)
        if len(start) < 12 or start[:4] != _MAGIC:
            raise IndexFileError(f"{path} is not an imagesearch local-feature index")
        version, n = struct.unpack("<II", start[4:12])
        if version != FORMAT:
            raise IndexFileError(f"{path} has format {version}, expected {FORMAT}")
        meta: dict[str, Any] = json.loads(start[12:12 + n])
        arrays: dict[str, np.ndarray] = {}
        for name, spec in meta["layout"].items():
            dtype, shape, offset = np.dtype(spec["dtype"]), tuple(spec["shape"]), \
                int(spec["offset"])
            count = int(np.prod(shape, dtype=np.int64))
            if offset + count * dtype.itemsize > size:
                raise IndexFileError(f"{path} is truncated")
            if count == 0:
                arrays[name] = np.zeros(shape, dtype)
            elif mapped and name in UNCHECKED:
                arrays[name] = np.memmap(path, dtype, "r", offset, shape)
            else:
                arrays[name] = np.fromfile(path, dtype, count, offset=offset).reshape(shape)
    except OSError as exc:
        raise IndexFileError(f"cannot read the local-feature index {path}: "
                             f"{exc.strerror or exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexFileError(f"{path} has a damaged header") from exc
    if _checksum(arrays) != meta.get("checksum"):
        raise IndexFileError(f"{path} is damaged (checksum mismatch)")
    return BaseFile(meta, arrays)


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


def read_journal(path: Path, token: str) -> tuple[list[JournalEntry], bool]:
    """The journal's intact entries for the base ``token``, and whether it can be
    extended (it is this base's and was read to its end with nothing torn)."""
    payloads, clean = read_records(path, _journal_head(token))
    entries: list[JournalEntry] = []
    for payload in payloads:
        entry = _decode(payload)
        if entry is None:
            return entries, False
        entries.append(entry)
    return entries, clean


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
