"""The catalog's searches, in plain SQL over a DB-API connection, without SQLAlchemy.

``Catalog`` runs these on its sessions' connections; ``CatalogReader`` runs them on a
connection of the standard library's sqlite3. A cold ``imagesearch search`` for a
description answers through the latter: opening the library in full (SQLAlchemy, every
service) would cost it about 0.2 s of its 0.8 on 2 cores (README, "Using the CLI"). One
SQL text per read, so the two can never disagree.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any, TypeVar

import numpy as np

from imagesearch.domain import PhotoRecord, PhotoStatus

# The newest migration in storage/migrations/versions. A test keeps the two in step;
# checking it directly lets an up-to-date catalog open without importing Alembic.
HEAD_REVISION = "0003"
# The catalog's batched upsert uses RETURNING (SQLite 3.35, March 2021).
MIN_SQLITE = (3, 35, 0)

GENERATION_KEY = "generation"  # meta: bumped by every committed change
_CHUNK = 500  # ids per IN (...) list, well under SQLite's limit on parameters
_PHOTO_COLUMNS = ("id, path, folder_id, size, mtime, content_hash, width, height, format, "
                  "captured_at, status, error")


def path_key(path: Path) -> bytes:
    """A path as the catalog stores it: its OS bytes (a Linux name need not be UTF-8)."""
    return os.fsencode(path)


def path_range(prefix: Path) -> tuple[bytes, bytes]:
    """Byte range [lo, hi) of every path strictly below ``prefix``."""
    base = path_key(prefix).rstrip(os.sep.encode()) + os.sep.encode()
    return base, base[:-1] + bytes([base[-1] + 1])


def _rows(conn: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    cursor = conn.cursor()
    try:
        cursor.execute(sql, tuple(params))
        return list(cursor.fetchall())
    finally:
        cursor.close()


def schema_revision(conn: Any) -> str | None:
    """The schema revision stored in the catalog, or None for an empty database."""
    if not _rows(conn, "SELECT name FROM sqlite_master WHERE type='table' "
                       "AND name='alembic_version'"):
        return None
    found = _rows(conn, "SELECT version_num FROM alembic_version")
    return str(found[0][0]) if found else None


def generation(conn: Any) -> int:
    found = _rows(conn, "SELECT value FROM meta WHERE key = ?", (GENERATION_KEY,))
    return int(found[0][0]) if found else 0


def photos(conn: Any, ids: Sequence[int]) -> dict[int, PhotoRecord]:
    """The records of ``ids`` that exist, by id."""
    wanted = [int(i) for i in ids]
    out: dict[int, PhotoRecord] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start:start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        for row in _rows(conn, f"SELECT {_PHOTO_COLUMNS} FROM photos WHERE id IN ({marks})",
                         chunk):
            record = photo_record(row)
            out[record.id] = record
    return out


def photo_by_path(conn: Any, path: Path) -> PhotoRecord | None:
    found = _rows(conn, f"SELECT {_PHOTO_COLUMNS} FROM photos WHERE path = ?",
                  (path_key(path),))
    return photo_record(found[0]) if found else None


def failures(conn: Any, limit: int) -> list[PhotoRecord]:
    """The failed photos, by path, at most ``limit``."""
    return [photo_record(row) for row in _rows(
        conn, f"SELECT {_PHOTO_COLUMNS} FROM photos WHERE status = ? ORDER BY path LIMIT ?",
        (PhotoStatus.FAILED.value, limit))]


def photo_record(row: Sequence[Any]) -> PhotoRecord:
    """A ``photos`` row (the columns of ``_PHOTO_COLUMNS``, in order) as a record."""
    (pid, path, folder_id, size, mtime, content_hash, width, height, fmt, captured_at,
     status, error) = row
    return PhotoRecord(
        id=int(pid), path=Path(os.fsdecode(bytes(path))), folder_id=int(folder_id),
        size=int(size), mtime=float(mtime), content_hash=content_hash, width=width,
        height=height, format=fmt, captured_at=_moment(captured_at),
        status=PhotoStatus(status), error=error)


def _moment(value: str | None) -> datetime | None:
    """A DateTime column as SQLAlchemy writes it in SQLite ('2024-05-01 12:00:00.000000',
    naive), back as that datetime."""
    return None if value is None else datetime.fromisoformat(value)


def ids_under(conn: Any, folder: Path) -> np.ndarray:
    lo, hi = path_range(folder)
    rows = _rows(conn, "SELECT id FROM photos WHERE path >= ? AND path < ?", (lo, hi))
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))


def vector_ids(conn: Any, model: str) -> np.ndarray:
    """The ids of the photos that have a vector for ``model``, ascending.

    Read from the primary key's index alone, in its order (the unary ``+`` keeps SQLite
    off the model's index, through which it would visit every row and its vector): at a
    million photos 0.3 s instead of 1.6 s.
    """
    cursor = conn.cursor()  # plain tuples, consumed as they come
    try:
        cursor.execute("SELECT photo_id FROM embeddings WHERE +model = ? ORDER BY photo_id",
                       (model,))
        return np.fromiter((r[0] for r in cursor), dtype=np.int64)
    finally:
        cursor.close()


def vectors_of(conn: Any, model: str, ids: np.ndarray, code_size: int = 0) -> np.ndarray:
    """float32 vectors of ``ids`` for ``model``, in that order; with ``code_size`` their
    uint8 codes.

    Raises:
        KeyError: one of ``ids`` has no vector for ``model``.
    """
    wanted = [int(i) for i in ids]
    found: dict[int, bytes] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start:start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        found.update((int(pid), bytes(blob)) for pid, blob in _rows(
            conn, f"SELECT photo_id, vector FROM embeddings WHERE model = ? "
                  f"AND photo_id IN ({marks})", [model, *chunk]))
    if not wanted:
        return np.zeros((0, code_size), np.uint8 if code_size else np.float32)
    stacked = np.stack([np.frombuffer(found[i], dtype=np.uint8 if code_size else np.float16)
                        for i in wanted])
    return stacked if code_size else stacked.astype(np.float32)


def vector_codec(conn: Any, model: str) -> tuple[int, bytes, str] | None:
    """(code size, codec bytes, their digest) of ``model``'s vectors when they are
    product codes."""
    found = _rows(conn, "SELECT code_size, data, digest FROM vector_codecs WHERE model = ?",
                  (model,))
    return (int(found[0][0]), bytes(found[0][1]), str(found[0][2])) if found else None


def vector_codec_digest(conn: Any, model: str) -> str | None:
    """The digest of ``model``'s codec (None: float16 vectors), without its bytes."""
    found = _rows(conn, "SELECT digest FROM vector_codecs WHERE model = ?", (model,))
    return str(found[0][0]) if found else None


def _uri(path: PurePath) -> str:
    """The file's URI, opened read-write but never created (``mode=rw``).

    A URI quotes every byte of the path ('?', '#', a Linux name that is not UTF-8), and
    SQLite reads them back. A Windows share (``\\\\server\\share``) keeps its host in
    the path, as SQLite wants it (``file:////server/share/...``): SQLite refuses a URI
    authority other than ``localhost``.
    """
    if not path.is_absolute():
        assert isinstance(path, Path), "a relative path needs the file system"
        path = path.absolute()
    uri = path.as_uri()
    if not uri.startswith("file:///"):
        uri = "file:////" + uri.removeprefix("file://")
    return uri + "?mode=rw"


class UnreadableCatalog(Exception):
    """``CatalogReader`` could not read the catalog: locked past its timeout, damaged."""


_T = TypeVar("_T")


class CatalogReader:
    """A catalog opened for reading only, through the standard library's sqlite3.

    For a one-shot search on the thread that opened it. It never creates, migrates or
    changes the catalog (as the last connection to close, SQLite folds the write-ahead
    log into the file, as any reader's does): ``open`` returns None where more is
    needed, and the caller opens the catalog in full (``storage.database``), which does
    it and says what is wrong.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, path: Path) -> CatalogReader | None:
        """The catalog at ``path`` when it exists and has the current schema, else None."""
        if sqlite3.sqlite_version_info < MIN_SQLITE or not path.is_file():
            return None  # (an old SQLite: the full open says what to do)
        try:
            # A lock held past a second (rare in WAL mode) hands the search to the full
            # open, which waits its own 10 s and says so if it must.
            conn = sqlite3.connect(_uri(path), uri=True, timeout=1.0)
        except (sqlite3.Error, OSError, ValueError):
            return None
        try:
            if schema_revision(conn) == HEAD_REVISION:
                return cls(conn)
        except sqlite3.Error:
            pass  # not a database, or damaged: the full open reports it
        conn.close()
        return None

    def close(self) -> None:
        self._conn.close()

    def _read(self, read: Callable[..., _T], *args: Any) -> _T:
        try:
            return read(self._conn, *args)
        except (sqlite3.Error, ValueError) as exc:  # ValueError: a damaged row
            raise UnreadableCatalog(str(exc)) from exc

    # Each raises UnreadableCatalog when the file cannot be read.

    def generation(self) -> int:
        return self._read(generation)

    def photos(self, ids: Sequence[int]) -> dict[int, PhotoRecord]:
        return self._read(photos, ids)

    def ids_under(self, folder: Path) -> np.ndarray:
        return self._read(ids_under, folder)

    def vector_ids(self, model: str) -> np.ndarray:
        return self._read(vector_ids, model)

    def vectors_of(self, model: str, ids: np.ndarray, code_size: int = 0) -> np.ndarray:
        """float32 vectors of ``ids``, in that order; with ``code_size`` their codes.

        Raises:
            KeyError: one of ``ids`` has no vector (the catalog changed meanwhile).
        """
        return self._read(vectors_of, model, ids, code_size)

    def vector_codec(self, model: str) -> tuple[int, bytes, str] | None:
        return self._read(vector_codec, model)

    def vector_codec_digest(self, model: str) -> str | None:
        return self._read(vector_codec_digest, model)
