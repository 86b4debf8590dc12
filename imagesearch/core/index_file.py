"""The search index's files: a checked base file written atomically, and a delta log.

The base file holds a whole FAISS index and the catalog generation it reflects. The
delta log beside it holds the commits made since, appended as they happen, so saving a
change costs the change's bytes, not the library's. Each log names the base it extends
(by the base's checksum) and each record carries its own checksum, so a log left by an
older base, or a record torn by a crash, is recognised and never replayed.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from imagesearch.errors import IndexFileError

# Bytes to write: a FAISS blob is a view of FAISS's array (no copy made into bytes).
Buffer = bytes | bytearray | memoryview

_MAGIC = b"ISIX"
FORMAT = 2  # 2 added the family and its search parameters; 1 (exact only) still reads
_DELTA_MAGIC = b"ISDL"
_DELTA_FORMAT = 1
_RECORD = struct.Struct("<I8s")  # payload length, xxh3-64 digest of the payload
RECORD_HEAD = _RECORD.size  # bytes framing each record of a log
_CHANGE = struct.Struct("<qqIII")  # generation before, after, removed, added, dim


@dataclass(frozen=True, slots=True)
class IndexHeader:
    model_id: str
    dim: int
    generation: int
    count: int
    checksum: str
    family: str = "flat"
    nprobe: int = 0  # lists probed per query (IVF families)
    trained_on: int = 0  # how many vectors the family was trained on (IVF families)
    recall: float = 0.0  # recall@10 against exact search the calibration measured (IVF)
    coding_error: float = 0.0  # mean 1 - cosine of training vectors read back (IVF)


@dataclass(frozen=True, slots=True)
class Change:
    """One catalog commit as the index sees it: ids removed, then ids (re)added."""

    before: int
    after: int
    removed: np.ndarray  # int64
    added: np.ndarray  # int64
    vectors: np.ndarray  # float32 rows of ``added``

    @property
    def size(self) -> int:
        return 8 * (len(self.removed) + len(self.added)) + 2 * self.vectors.size


# The base file ------------------------------------------------------------------------------

def index_parts(header: IndexHeader, blob: Sequence[Buffer]) -> list[Buffer]:
    """A base file's content in parts, its head then the FAISS blob's pieces (written one
    after the other, so a large blob is never copied to be joined)."""
    head = json.dumps(asdict(header)).encode()
    return [_MAGIC + struct.pack("<II", FORMAT, len(head)) + head, *blob]


def pack_index(header: IndexHeader, blob: Sequence[Buffer]) -> bytes:
    return b"".join(index_parts(header, blob))


def unpack_index(data: bytes | memoryview, path: Path) -> tuple[IndexHeader, memoryview]:
    """The header and the FAISS blob of a base file, checked against its checksum.

    Raises:
        IndexFileError: not an index file, another format, or damaged.
    """
    header = unpack_header(data, path)
    blob = memoryview(data)[12 + struct.unpack("<II", data[4:12])[1]:]
    if xxhash.xxh3_64_hexdigest(blob) != header.checksum:
        raise IndexFileError(f"{path} is damaged (checksum mismatch)")
    return header, blob


def unpack_header(data: bytes | memoryview, path: Path) -> IndexHeader:
    """The header at the start of ``data``.

    Raises:
        IndexFileError: not an index file, another format, or a damaged header.
    """
    if len(data) < 12 or data[:4] != _MAGIC:
        raise IndexFileError(f"{path} is not an imagesearch index file")
    version, n = struct.unpack("<II", data[4:12])
    if version not in (1, FORMAT):
        raise IndexFileError(f"{path} has index format {version}, expected {FORMAT}")
    try:
        raw: dict[str, Any] = json.loads(bytes(data[12:12 + n]))
        header = IndexHeader(
            str(raw["model_id"]), int(raw["dim"]), int(raw["generation"]),
            int(raw["count"]), str(raw["checksum"]), str(raw.get("family", "flat")),
            int(raw.get("nprobe", 0)), int(raw.get("trained_on", 0)),
            float(raw.get("recall", 0.0)), float(raw.get("coding_error", 0.0)))
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexFileError(f"{path} has a damaged header") from exc
    return header


def peek_header(path: Path) -> IndexHeader | None:
    """A base file's header alone, unchecked (for display); None if it has none."""
    try:
        with open(path, "rb") as f:
            start = f.read(12)
            if len(start) < 12 or start[:4] != _MAGIC:
                return None
            n = struct.unpack("<II", start[4:12])[1]
            data = start + f.read(n)
        return unpack_header(data, path)
    except (OSError, IndexFileError):
        return None


def write_index_file(path: Path, data: Buffer | Sequence[Buffer]) -> None:
    """Write ``data`` (or its parts, one after the other) to ``path`` atomically: temp
    file in the same folder, fsync, rename.

    Raises:
        IndexFileError: the file could not be written; any previous file is intact.
    """
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".",
                                         suffix=".tmp", delete=False) as tmp:
            tmp_name = tmp.name
            for part in (data if isinstance(data, (list, tuple)) else (data,)):
                tmp.write(part)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise IndexFileError(f"could not save the search index to {path}: "
                             f"{exc.strerror or exc}") from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


# The delta log ------------------------------------------------------------------------------

def delta_path(base: Path) -> Path:
    return base.with_name(base.name + ".delta")


def start_delta_log(path: Path, base_checksum: str) -> int:
    """An empty log for the base with ``base_checksum``, replacing any older log
    atomically; returns its size.

    Raises:
        IndexFileError: it could not be written.
    """
    head = _delta_head(base_checksum)
    write_index_file(path, head)
    return len(head)


def append_changes(path: Path, changes: list[Change]) -> int:
    """Append ``changes`` to the log and sync it; returns the log's new size in bytes.

    A crash mid-append leaves a torn last record, which ``read_changes`` stops before.

    Raises:
        IndexFileError: the log could not be written.
    """
    return append_records(path, [_encode(change) for change in changes],
                          "the search index's changes")


def append_records(path: Path, payloads: list[bytes], what: str) -> int:
    """Append ``payloads`` to a log, each framed with its length and checksum, and sync;
    returns the log's new size in bytes.

    Raises:
        IndexFileError: the log could not be written (``what`` names it).
    """
    data = b"".join(_RECORD.pack(len(payload), xxhash.xxh3_64_digest(payload)) + payload
                    for payload in payloads)
    try:
        with open(path, "ab") as log:
            log.write(data)
            log.flush()
            os.fsync(log.fileno())
            return log.tell()
    except OSError as exc:
        raise IndexFileError(f"could not save {what} to {path}: "
                             f"{exc.strerror or exc}") from exc


def read_records(path: Path, head: bytes) -> tuple[list[memoryview], bool]:
    """The intact framed payloads of a log that starts with ``head``, in order, and
    whether the log was read to its end with nothing torn (False too when it is missing
    or starts otherwise, with no payloads then). Stops at the first torn or damaged
    record: what follows it cannot be trusted."""
    try:
        data = path.read_bytes()
    except OSError:
        return [], False
    if not data.startswith(head):
        return [], False
    payloads: list[memoryview] = []
    at = len(head)
    while at + _RECORD.size <= len(data):
        length, digest = _RECORD.unpack_from(data, at)
        payload = memoryview(data)[at + _RECORD.size:at + _RECORD.size + length]
        if len(payload) != length or xxhash.xxh3_64_digest(payload) != digest:
            return payloads, False
        payloads.append(payload)
        at += _RECORD.size + length
    return payloads, at == len(data)


@dataclass
class LogRead:
    """What a delta log held for a base: its intact records, and whether it can be
    extended (it is this base's log and was read to its end with nothing torn)."""

    changes: list[Change]
    clean: bool
    records: int = 0


def read_changes(path: Path, base_checksum: str) -> LogRead:
    """The log's intact records, in order; none if the log belongs to another base.

    Stops at the first torn or damaged record: what follows it cannot be trusted, and
    the generation check that follows the replay notices anything missing. ``clean`` is
    False then, and when there is no log or it is another base's: appending to such a
    log would add records no replay reaches, so the next save must write a whole base.
    """
    payloads, clean = read_records(path, _delta_head(base_checksum))
    changes: list[Change] = []
    for payload in payloads:
        change = _decode(payload)
        if change is None:
            return LogRead(changes, False, len(changes))
        changes.append(change)
    return LogRead(changes, clean, len(changes))


def record_bytes(change: Change) -> int:
    """The bytes ``change`` takes in the log."""
    return _RECORD.size + _CHANGE.size + change.size


def _delta_head(base_checksum: str) -> bytes:
    name = base_checksum.encode("ascii")
    return _DELTA_MAGIC + struct.pack("<II", _DELTA_FORMAT, len(name)) + name


def _encode(change: Change) -> bytes:
    dim = change.vectors.shape[1] if change.vectors.ndim == 2 else 0
    payload = (_CHANGE.pack(change.before, change.after, len(change.removed),
                            len(change.added), dim)
               + np.ascontiguousarray(change.removed, "<i8").tobytes()
               + np.ascontiguousarray(change.added, "<i8").tobytes()
               # The catalog keeps float16: this loses nothing the catalog has.
               + np.ascontiguousarray(change.vectors, "<f2").tobytes())
    return payload


def _decode(payload: memoryview) -> Change | None:
    if len(payload) < _CHANGE.size:
        return None
    before, after, n_removed, n_added, dim = _CHANGE.unpack_from(payload)
    at = _CHANGE.size
    if len(payload) != at + 8 * (n_removed + n_added) + 2 * n_added * dim:
        return None
    removed = np.frombuffer(payload, "<i8", n_removed, at).astype(np.int64)
    at += 8 * n_removed
    added = np.frombuffer(payload, "<i8", n_added, at).astype(np.int64)
    at += 8 * n_added
    vectors = np.frombuffer(payload, "<f2", n_added * dim, at).astype(np.float32)
    return Change(before, after, removed, added, vectors.reshape(n_added, dim))


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
