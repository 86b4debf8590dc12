"""The catalog repository: every read and write of folders, photos and vectors."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import (
    Engine,
    Integer,
    LargeBinary,
    Text,
    cast,
    delete,
    func,
    literal,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from imagesearch.domain import FolderInfo, OfflineSubfolder, PhotoRecord, PhotoStatus
from imagesearch.errors import CatalogError, FolderError, VectorKindChanged
from imagesearch.storage import catalog_reads as reads
from imagesearch.storage.schema import (
    EmbeddingRow,
    FolderRow,
    LocalFeatureRow,
    MetaRow,
    PhotoRow,
    VectorCodecRow,
)

_GENERATION = reads.GENERATION_KEY
_T = TypeVar("_T")
_VACUUM_DUE = "vacuum_due"  # vectors were coded in place: the file can shrink


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class Commit:
    """The generations one write moved the catalog from and to, read in its transaction.

    The live index mirrors a commit only when ``before`` is the generation it holds: any
    other value means another process (the CLI, say) committed in between, and the index
    must be reloaded from the catalog rather than claim a generation it does not hold.
    """

    before: int
    after: int


@dataclass(frozen=True, slots=True)
class SubtreeMemory:
    """What the latest full scan of a folder learned about its parts (kept in ``meta``).

    ``mounts``: folders on another drive than their parent, with that drive's device
    number, so that one coming back empty or on its parent's drive reads as unplugged.
    ``offline``: the parts that could not be seen, with why.
    """

    mounts: dict[Path, int]
    offline: dict[Path, str]


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """What a scan needs to know about a photo already in the catalog."""

    id: int
    size: int
    mtime: float
    content_hash: str | None
    status: PhotoStatus
    has_vector: bool
    has_features: bool = False


@dataclass(frozen=True, slots=True)
class PhotoUpdate:
    """The outcome of decoding (and maybe embedding) one file, ready to store."""

    path: Path
    folder_id: int
    size: int
    mtime: float
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    captured_at: datetime | None = None
    error: str | None = None  # set: the photo failed and has no vector
    vector: np.ndarray | None = None  # None: keep the stored one (unless the bytes changed)
    features: bytes | None = None  # likewise, for the extractor given to store()
    feature_count: int = 0


class Catalog:
    """Repository over the catalog database. Thread-safe: each call uses its own session."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._local = threading.local()  # each writing thread's latest Commit

    def close(self) -> None:
        self.engine.dispose()

    # Generation ----------------------------------------------------------------------------

    def _read(self, read: Callable[..., _T], *args: Any) -> _T:
        """One of ``catalog_reads``' searches, on a session's own SQLite connection."""
        with self._sessions() as s:
            return read(s.connection().connection, *args)

    def generation(self) -> int:
        return self._read(reads.generation)

    def last_commit(self) -> Commit | None:
        """The generations of this thread's latest write, as its own transaction saw them.

        None when that call had nothing to write. Reading ``generation()`` after the
        commit instead would count a commit another process made in between as this one's.
        """
        commit: Commit | None = getattr(self._local, "commit", None)
        return commit

    def _bump(self, s: Session) -> None:
        # Increment first, read after: the UPDATE takes SQLite's write lock, so no other
        # process can commit between it and this transaction's commit, and the value read
        # back is this transaction's own.
        result = s.execute(update(MetaRow).where(MetaRow.key == _GENERATION)
                           .values(value=cast(cast(MetaRow.value, Integer) + 1, Text)))
        if not getattr(result, "rowcount", 0):
            s.add(MetaRow(key=_GENERATION, value="1"))
            s.flush()
            after = 1
        else:
            after = int(s.scalar(select(MetaRow.value).where(MetaRow.key == _GENERATION))
                        or 0)
        self._local.commit = Commit(after - 1, after)

    # Folders -------------------------------------------------------------------------------

    def add_folder(self, path: Path, watched: bool = True) -> int:
        """Add a folder (absolute, resolved); returns its id. Adding twice is harmless."""
        with self._sessions.begin() as s:
            existing = s.scalar(select(FolderRow).where(FolderRow.path == path))
            if existing is not None:
                return existing.id
            for other in s.scalars(select(FolderRow)):
                if path.is_relative_to(other.path):
                    raise FolderError(f"{path} is already in the library, inside {other.path}.")
            row = FolderRow(path=path, watched=watched, online=True, added_at=_now())
            s.add(row)
            s.flush()
            # A parent added after its children absorbs them and their photos.
            children = [f for f in s.scalars(select(FolderRow)) if f.id != row.id
                        and f.path.is_relative_to(path)]
            for child in children:
                s.execute(update(PhotoRow).where(PhotoRow.folder_id == child.id)
                          .values(folder_id=row.id))
                s.execute(delete(MetaRow).where(MetaRow.key == _subtrees_key(child.id)))
                s.delete(child)
            return row.id

    def remove_folder(self, folder_id: int) -> int:
        """Forget a folder and its photos; returns how many photos went."""
        with self._sessions.begin() as s:
            count = s.scalar(select(func.count()).where(PhotoRow.folder_id == folder_id)) or 0
            s.execute(delete(PhotoRow).where(PhotoRow.folder_id == folder_id))
            s.execute(delete(FolderRow).where(FolderRow.id == folder_id))
            s.execute(delete(MetaRow).where(MetaRow.key == _subtrees_key(folder_id)))
            self._bump(s)
            return int(count)

    def set_folder_state(self, folder_id: int, *, online: bool | None = None,
                         scanned: bool = False, watched: bool | None = None) -> None:
        values: dict[str, object] = {}
        if online is not None:
            values["online"] = online
        if watched is not None:
            values["watched"] = watched
        if scanned:
            values["last_scan"] = _now()
        if values:
            with self._sessions.begin() as s:
                s.execute(update(FolderRow).where(FolderRow.id == folder_id).values(**values))

    def folders(self) -> list[FolderInfo]:
        with self._sessions() as s:
            counts: dict[tuple[int, str], int] = {
                (fid, status): n
                for fid, status, n in s.execute(
                    select(PhotoRow.folder_id, PhotoRow.status, func.count())
                    .group_by(PhotoRow.folder_id, PhotoRow.status)
                )
            }
            memory = {row.key: row.value for row in s.scalars(
                select(MetaRow).where(MetaRow.key.like(_subtrees_key("%"))))}
            out = []
            for f in s.scalars(select(FolderRow).order_by(FolderRow.path)):
                per = {st: counts.get((f.id, st.value), 0) for st in PhotoStatus}
                offline = _decode_subtrees(memory.get(_subtrees_key(f.id))).offline
                out.append(FolderInfo(
                    id=f.id, path=f.path, watched=f.watched, online=f.online,
                    photo_count=sum(per.values()),
                    indexed_count=per[PhotoStatus.INDEXED],
                    failed_count=per[PhotoStatus.FAILED],
                    last_scan=_utc(f.last_scan),
                    offline_subfolders=tuple(OfflineSubfolder(p, why)
                                             for p, why in sorted(offline.items())),
                ))
            return out

    def folder_ids(self) -> set[int]:
        with self._sessions() as s:
            return set(s.scalars(select(FolderRow.id)))

    def subtrees(self, folder_id: int) -> SubtreeMemory:
        with self._sessions() as s:
            row = s.get(MetaRow, _subtrees_key(folder_id))
            return _decode_subtrees(row.value if row is not None else None)

    def set_subtrees(self, folder_id: int, memory: SubtreeMemory) -> None:
        value = json.dumps({
            "mounts": [[os.fsdecode(p), dev] for p, dev in sorted(memory.mounts.items())],
            "offline": [[os.fsdecode(p), why] for p, why in sorted(memory.offline.items())],
        })
        # One statement (an upsert), not merge()'s read-then-insert: two processes scanning
        # the same folder at once (the app and the CLI) would both insert the key.
        upsert = sqlite_insert(MetaRow).values(key=_subtrees_key(folder_id), value=value)
        with self._sessions.begin() as s:
            s.execute(upsert.on_conflict_do_update(index_elements=[MetaRow.key],
                                                   set_={"value": value}))

    # Photos --------------------------------------------------------------------------------

    def entries(self, folder_id: int, model: str, extractor: str | None = None
                ) -> dict[str, CatalogEntry]:
        """Every photo of a folder keyed by its path as a string (as ``os.scandir`` gives
        it; a rescan compares many thousands, and ``Path`` objects would cost more than
        the query), with whether it has a vector for ``model`` and current local
        features from ``extractor``."""
        statuses = {s.value: s for s in PhotoStatus}
        with self._sessions() as s:
            rows = s.execute(
                select(PhotoRow.id, type_coerce(PhotoRow.path, LargeBinary), PhotoRow.size,
                       PhotoRow.mtime, PhotoRow.content_hash, PhotoRow.status,
                       _has_vector(model), _has_features(extractor))
                .where(PhotoRow.folder_id == folder_id)
            )
            return {
                os.fsdecode(path): CatalogEntry(pid, size, mtime, h, statuses[status],
                                                bool(vec), bool(feat))
                for pid, path, size, mtime, h, status, vec, feat in rows
            }

    def entry(self, path: Path, model: str, extractor: str | None = None
              ) -> CatalogEntry | None:
        with self._sessions() as s:
            row = s.execute(
                select(PhotoRow.id, PhotoRow.size, PhotoRow.mtime, PhotoRow.content_hash,
                       PhotoRow.status, _has_vector(model), _has_features(extractor))
                .where(PhotoRow.path == path)).first()
            if row is None:
                return None
            pid, size, mtime, h, status, vec, feat = row
            return CatalogEntry(pid, size, mtime, h, PhotoStatus(status), bool(vec),
                                bool(feat))

    def store(self, model: str, updates: Sequence[PhotoUpdate],
              extractor: str | None = None) -> list[int]:
        """Insert or update photos by path, with their vectors and features, in one
        transaction.

        Returns the photo ids in the order of ``updates``.
        """
        self._local.commit = None
        if not updates:
            return []
        now = _now()
        rows = [
            dict(folder_id=u.folder_id, path=u.path, size=u.size, mtime=u.mtime,
                 content_hash=u.content_hash, width=u.width, height=u.height,
                 format=u.format, captured_at=u.captured_at,
                 status=(PhotoStatus.FAILED if u.error else PhotoStatus.INDEXED).value,
                 error=u.error, updated_at=now)
            for u in updates
        ]
        insert = sqlite_insert(PhotoRow)
        upsert = insert.on_conflict_do_update(
            index_elements=[PhotoRow.path],
            set_={k: insert.excluded[k] for k in rows[0] if k != "path"},
        ).returning(PhotoRow.id, sort_by_parameter_order=True)
        with self._sessions.begin() as s:
            before: dict[Path, str | None] = {
                path: h for path, h in s.execute(
                    select(PhotoRow.path, PhotoRow.content_hash)
                    .where(PhotoRow.path.in_([u.path for u in updates])))}
            # One batched statement for the whole list (executemany with RETURNING).
            ids = [int(i) for i in s.scalars(upsert, rows)]
            pairs = list(zip(ids, updates, strict=True))
            # New bytes (or none readable): every vector and feature record described the
            # old ones. Same bytes: only what this update brings is replaced.
            stale = [pid for pid, u in pairs
                     if u.error is not None or before.get(u.path, u.content_hash)
                     != u.content_hash]
            for table in (EmbeddingRow, LocalFeatureRow):
                s.execute(delete(table).where(table.photo_id.in_(stale)))
            vec_rows = [{"photo_id": pid, "model": model, "vector": _vector_bytes(u.vector)}
                        for pid, u in pairs if u.vector is not None]
            if vec_rows:
                _check_coding(s, model, [u.vector for _, u in pairs if u.vector is not None])
                s.execute(delete(EmbeddingRow).where(
                    EmbeddingRow.photo_id.in_([r["photo_id"] for r in vec_rows]),
                    EmbeddingRow.model == model))
                s.execute(sqlite_insert(EmbeddingRow), vec_rows)
            feat_rows = [{"photo_id": pid, "extractor": extractor,
                          "content_hash": u.content_hash, "count": u.feature_count,
                          "data": u.features}
                         for pid, u in pairs if u.features is not None and u.error is None]
            if feat_rows and extractor is not None:
                s.execute(delete(LocalFeatureRow).where(
                    LocalFeatureRow.photo_id.in_([r["photo_id"] for r in feat_rows]),
                    LocalFeatureRow.extractor == extractor))
                s.execute(sqlite_insert(LocalFeatureRow), feat_rows)
            self._bump(s)
            return ids

    def move(self, photo_id: int, new_path: Path, folder_id: int, mtime: float) -> None:
        """Record that a photo now lives at ``new_path``; its vectors stay."""
        with self._sessions.begin() as s:
            s.execute(update(PhotoRow).where(PhotoRow.id == photo_id).values(
                path=new_path, folder_id=folder_id, mtime=mtime, updated_at=_now()))
            self._bump(s)

    def remove_photos(self, ids: Iterable[int]) -> int:
        self._local.commit = None
        id_list = [int(i) for i in ids]  # NumPy integers would not match in SQL
        if not id_list:
            return 0
        with self._sessions.begin() as s:
            for start in range(0, len(id_list), 500):
                s.execute(delete(PhotoRow).where(PhotoRow.id.in_(id_list[start:start + 500])))
            self._bump(s)
        return len(id_list)

    def reset_failed(self, folder_id: int | None = None) -> int:
        """Mark failed photos pending again so the next run retries them."""
        with self._sessions.begin() as s:
            stmt = update(PhotoRow).where(PhotoRow.status == PhotoStatus.FAILED.value)
            if folder_id is not None:
                stmt = stmt.where(PhotoRow.folder_id == folder_id)
            result = s.execute(stmt.values(status=PhotoStatus.PENDING.value))
            return int(getattr(result, "rowcount", 0) or 0)

    def photos(self, ids: Sequence[int]) -> dict[int, PhotoRecord]:
        return self._read(reads.photos, ids)

    def photo_by_path(self, path: Path) -> PhotoRecord | None:
        return self._read(reads.photo_by_path, path)

    def failures(self, limit: int = 1000) -> list[PhotoRecord]:
        return self._read(reads.failures, limit)

    def ids_under(self, folder: Path) -> np.ndarray:
        return self._read(reads.ids_under, folder)

    def counts(self) -> dict[PhotoStatus, int]:
        with self._sessions() as s:
            found: dict[str, int] = {
                status: n for status, n in s.execute(
                    select(PhotoRow.status, func.count()).group_by(PhotoRow.status))}
        return {st: int(found.get(st.value, 0)) for st in PhotoStatus}

    def last_indexed(self) -> datetime | None:
        """When a photo was last indexed, in UTC."""
        with self._sessions() as s:
            return _utc(s.scalar(select(func.max(PhotoRow.updated_at))
                                 .where(PhotoRow.status == PhotoStatus.INDEXED.value)))

    # Vectors -------------------------------------------------------------------------------

    def vectors(self, model: str, code_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """All (ids, float32 vectors) stored for ``model``, ids ascending, for rebuilding
        the index; with ``code_size`` (a compact library, ``vector_codec``) the rows of
        uint8 product codes instead.

        Read in the primary key's order (no sort of a gigabyte of vectors in a temporary
        B-tree, as ordering the model index's rows took) a few thousand rows at a time,
        each batch straight into a float16 array (one statement: a commit meanwhile is
        either wholly in it or not): at a million photos 5-12 s and 3.1 GB at the peak
        here, where reading them all as rows first took 15-20 s and 4.3 GB.

        Raises:
            ValueError: the stored vectors do not all have one length (a damaged row).
        """
        id_parts: list[np.ndarray] = []
        parts: list[np.ndarray] = []
        with self._sessions() as s:
            cursor = s.connection().connection.cursor()
            try:
                cursor.execute(f"SELECT photo_id, vector FROM {EmbeddingRow.__tablename__} "
                               "WHERE +model = ? ORDER BY photo_id", (model,))
                size = 0
                while rows := cursor.fetchmany(4096):
                    size = size or len(rows[0][1])
                    if any(len(r[1]) != size for r in rows) or (
                            size != code_size if code_size else size % 2):
                        raise ValueError(f"the vectors stored for {model} differ in length")
                    id_parts.append(np.fromiter((r[0] for r in rows), np.int64, len(rows)))
                    parts.append(np.frombuffer(b"".join(r[1] for r in rows),
                                               np.uint8 if code_size else np.float16)
                                 .reshape(len(rows), -1))
            finally:
                cursor.close()
        if not parts:
            return np.zeros(0, dtype=np.int64), np.zeros((0, code_size), dtype=np.uint8
                                                         if code_size else np.float32)
        ids = np.concatenate(id_parts)
        half = np.concatenate(parts)
        del parts  # the batches, before the float32 copy doubles the peak
        return ids, half if code_size else half.astype(np.float32)

    def vectors_of(self, model: str, ids: np.ndarray, code_size: int = 0) -> np.ndarray:
        """float32 vectors of ``ids`` for ``model``, in that order (each must have one);
        with ``code_size`` their uint8 codes."""
        return self._read(reads.vectors_of, model, ids, code_size)

    def vector_ids(self, model: str) -> np.ndarray:
        """The ids of the photos that have a vector for ``model``, ascending."""
        return self._read(reads.vector_ids, model)

    def vector(self, photo_id: int, model: str, code_size: int = 0) -> np.ndarray | None:
        """One photo's float32 vector, or with ``code_size`` its uint8 codes."""
        with self._sessions() as s:
            blob = s.scalar(select(EmbeddingRow.vector).where(
                EmbeddingRow.photo_id == photo_id, EmbeddingRow.model == model))
        if blob is None:
            return None
        if code_size:
            return np.frombuffer(blob, dtype=np.uint8).copy()
        return np.frombuffer(blob, dtype=np.float16).astype(np.float32)

    # Compact libraries: product codes in place of float16 --------------------------------

    def vector_codec(self, model: str) -> tuple[int, bytes, str] | None:
        """(code size, codec bytes, their digest) of ``model``'s vectors when they are
        product codes."""
        return self._read(reads.vector_codec, model)

    def vector_codec_digest(self, model: str) -> str | None:
        """The digest of ``model``'s codec (None: float16 vectors), without its bytes."""
        return self._read(reads.vector_codec_digest, model)

    def vector_code_size(self, model: str) -> int:
        """The code size of ``model``'s vectors, 0 when they are float16 (no codec read)."""
        with self._sessions() as s:
            return int(s.scalar(select(VectorCodecRow.code_size)
                                .where(VectorCodecRow.model == model)) or 0)

    def compress_vectors(self, model: str, codec: bytes, code_size: int,
                         encode: Callable[[np.ndarray], np.ndarray]) -> int:
        """Replace every float16 vector of ``model`` by its codes, ``encode(float32
        rows) -> uint8 rows of code_size``, and keep ``codec``: all in one transaction, so
        a kill leaves either the float16 vectors or the codes, never a mix.

        Returns how many vectors were coded: 0 when the model had a codec already
        (another process coded it first).

        Raises:
            CatalogError: the catalog could not be written (busy past its timeout).
        """
        return self._recode(model, lambda rows: np.asarray(encode(
            np.frombuffer(b"".join(rows), np.float16).reshape(len(rows), -1)
            .astype(np.float32)), dtype=np.uint8), code_size, codec)

    def expand_vectors(self, model: str, code_size: int,
                       decode: Callable[[np.ndarray], np.ndarray]) -> int:
        """The reverse of ``compress_vectors``: every coded vector of ``model`` becomes
        float16 of what it stands for (``decode(uint8 rows) -> float32``) and the codec
        is forgotten, in one transaction. The vectors stay as approximate as the codes
        were; nothing is lost. Returns how many were rewritten (0: no codec).

        Raises:
            CatalogError: the catalog could not be written (busy past its timeout).
        """
        return self._recode(model, lambda rows: np.asarray(decode(
            np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), code_size)),
            dtype=np.float16), 0, None)

    def _recode(self, model: str, convert: Callable[[list[bytes]], np.ndarray],
                code_size: int, codec: bytes | None) -> int:
        """Rewrite every vector of ``model`` through ``convert`` in one transaction that
        takes the write lock before it reads anything (no other process can commit a
        vector between the read and the rewrite); then keep ``codec`` (code_size > 0)
        or forget it (``codec`` None)."""
        done = 0
        table = EmbeddingRow.__tablename__
        try:
            with self._sessions.begin() as s:
                self._bump(s)  # first: the write lock, before anything is read
                has_codec = s.get(VectorCodecRow, model) is not None
                if has_codec == (codec is not None):
                    raise _NothingToDo  # coded already (or not coded): rolled back
                # Plain DB-API rows and one executemany a batch, in this transaction: at a
                # million photos the ORM's bulk update took 143 s, this 18 s.
                cursor = s.connection().connection.cursor()
                try:
                    last = -1
                    while True:
                        cursor.execute(f"SELECT photo_id, vector FROM {table} WHERE "
                                       "+model = ? AND photo_id > ? ORDER BY photo_id "
                                       "LIMIT 8192", (model, last))
                        rows = cursor.fetchall()
                        if not rows:
                            break
                        out = convert([r[1] for r in rows])
                        if len(out) != len(rows) or (code_size and out.shape[1] != code_size):
                            raise ValueError(f"expected {len(rows)} rows of {code_size or 'any'}"
                                             f" values, got {out.shape}")
                        cursor.executemany(
                            f"UPDATE {table} SET vector = ? WHERE photo_id = ? AND model = ?",
                            [(row.tobytes(), r[0], model)
                             for r, row in zip(rows, out, strict=True)])
                        done += len(rows)
                        last = int(rows[-1][0])
                finally:
                    cursor.close()
                if codec is not None:
                    s.add(VectorCodecRow(model=model, code_size=code_size, data=codec,
                                         digest=codec_digest(codec)))
                    s.merge(MetaRow(key=_VACUUM_DUE, value="1"))  # rows shrank in place
                else:
                    s.execute(delete(VectorCodecRow).where(VectorCodecRow.model == model))
        except _NothingToDo:
            self._local.commit = None
            return 0
        except (OperationalError, IntegrityError) as exc:
            self._local.commit = None
            raise CatalogError(f"cannot rewrite the vectors of {model}: {exc.orig}") from exc
        except BaseException:
            self._local.commit = None  # rolled back: no commit to report
            raise
        return done

    def drop_coded_vectors(self, model: str) -> int:
        """Forget ``model``'s codec and every vector coded with it: for a codec that is
        damaged, whose codes mean nothing any more. Its photos are embedded anew.
        Returns the vectors deleted."""
        try:
            with self._sessions.begin() as s:
                self._bump(s)
                if s.get(VectorCodecRow, model) is None:
                    raise _NothingToDo
                gone = s.execute(delete(EmbeddingRow).where(EmbeddingRow.model == model))
                s.execute(delete(VectorCodecRow).where(VectorCodecRow.model == model))
                return int(getattr(gone, "rowcount", 0) or 0)
        except _NothingToDo:
            self._local.commit = None
            return 0
        except OperationalError as exc:
            self._local.commit = None
            raise CatalogError(f"cannot forget the vectors of {model}: {exc.orig}") from exc

    def vacuum_due(self) -> bool:
        """Vectors were coded in place since the last ``vacuum``: the file holds space
        it could give back."""
        with self._sessions() as s:
            return s.get(MetaRow, _VACUUM_DUE) is not None

    def vacuum(self) -> str | None:
        """Give the space of shrunken rows back to the file system: SQLite's VACUUM (the
        file is rewritten, about as long as copying it, holding the write lock), then a
        checkpoint that hands the write-ahead log's pages back too. Returns None, or why
        it could not (another connection busy, the disk full): tried again next time."""
        try:
            with self.engine.connect() as conn:
                auto = conn.execution_options(isolation_level="AUTOCOMMIT")
                auto.exec_driver_sql("VACUUM")
                auto.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            with self._sessions.begin() as s:
                s.execute(delete(MetaRow).where(MetaRow.key == _VACUUM_DUE))
            return None
        except OperationalError as exc:
            return str(exc.orig)

    # Local features ------------------------------------------------------------------------

    def features(self, ids: Sequence[int], extractor: str) -> dict[int, bytes]:
        """Current feature records of these photos (stale ones, of older bytes, left out)."""
        out: dict[int, bytes] = {}
        with self._sessions() as s:
            for start in range(0, len(ids), 500):
                chunk = [int(i) for i in ids[start:start + 500]]
                rows = s.execute(
                    select(LocalFeatureRow.photo_id, LocalFeatureRow.data)
                    .join(PhotoRow, PhotoRow.id == LocalFeatureRow.photo_id)
                    .where(LocalFeatureRow.photo_id.in_(chunk),
                           LocalFeatureRow.extractor == extractor,
                           _same_hash()))
                out.update({int(pid): bytes(data) for pid, data in rows})
        return out

    def feature_ids(self, extractor: str) -> np.ndarray:
        with self._sessions() as s:
            rows = s.execute(
                select(LocalFeatureRow.photo_id)
                .join(PhotoRow, PhotoRow.id == LocalFeatureRow.photo_id)
                .where(LocalFeatureRow.extractor == extractor, _same_hash()))
            return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def feature_versions(self, extractor: str) -> dict[int, str]:
        """Photo id -> the content hash its current record was made from (which changes
        whenever the record is made again for new bytes)."""
        with self._sessions() as s:
            rows = s.execute(
                select(LocalFeatureRow.photo_id, LocalFeatureRow.content_hash)
                .join(PhotoRow, PhotoRow.id == LocalFeatureRow.photo_id)
                .where(LocalFeatureRow.extractor == extractor, _same_hash()))
            return {int(pid): h or "" for pid, h in rows}

    def iter_features(self, extractor: str, chunk: int = 2000
                      ) -> Iterator[list[tuple[int, bytes]]]:
        """Every current feature record, in chunks of (photo id, bytes), by photo id."""
        last = -1
        while True:
            with self._sessions() as s:
                rows = s.execute(
                    select(LocalFeatureRow.photo_id, LocalFeatureRow.data)
                    .join(PhotoRow, PhotoRow.id == LocalFeatureRow.photo_id)
                    .where(LocalFeatureRow.extractor == extractor,
                           LocalFeatureRow.photo_id > last, _same_hash())
                    .order_by(LocalFeatureRow.photo_id).limit(chunk)).all()
            if not rows:
                return
            yield [(int(pid), bytes(data)) for pid, data in rows]
            last = int(rows[-1][0])

    def feature_bytes(self, extractor: str) -> tuple[int, int]:
        """(records, total bytes) stored for ``extractor``."""
        with self._sessions() as s:
            n, total = s.execute(
                select(func.count(), func.coalesce(func.sum(func.length(LocalFeatureRow.data)),
                                                   0))
                .where(LocalFeatureRow.extractor == extractor)).one()
        return int(n), int(total)

    def missing_features(self, extractor: str, after: int = -1, limit: int = 64
                         ) -> list[tuple[int, Path, str]]:
        """Indexed photos with no current record from ``extractor``: (id, path, content
        hash) in id order, after ``after`` (a resumable walk)."""
        with self._sessions() as s:
            rows = s.execute(
                select(PhotoRow.id, PhotoRow.path, PhotoRow.content_hash)
                .where(PhotoRow.status == PhotoStatus.INDEXED.value,
                       PhotoRow.content_hash.is_not(None), PhotoRow.id > after,
                       ~_has_features(extractor))
                .order_by(PhotoRow.id).limit(limit)).all()
        return [(int(pid), path, str(h)) for pid, path, h in rows]

    def count_missing_features(self, extractor: str) -> int:
        with self._sessions() as s:
            return int(s.scalar(
                select(func.count()).select_from(PhotoRow)
                .where(PhotoRow.status == PhotoStatus.INDEXED.value,
                       PhotoRow.content_hash.is_not(None), ~_has_features(extractor)))
                or 0)

    def store_features(self, extractor: str,
                       records: Sequence[tuple[int, str, int, bytes]]) -> int:
        """Add or replace feature records (photo id, the content hash they describe,
        count, bytes) without touching the photos; returns how many were stored.

        A photo removed meanwhile is skipped; one whose bytes changed meanwhile gets a
        record that never counts (its hash differs) and is computed again.
        """
        if not records:
            return 0
        with self._sessions.begin() as s:
            ids = [int(r[0]) for r in records]
            alive = set(s.scalars(select(PhotoRow.id).where(PhotoRow.id.in_(ids))))
            rows = [{"photo_id": int(pid), "extractor": extractor, "content_hash": h,
                     "count": int(n), "data": data}
                    for pid, h, n, data in records if int(pid) in alive]
            s.execute(delete(LocalFeatureRow).where(
                LocalFeatureRow.photo_id.in_([r["photo_id"] for r in rows]),
                LocalFeatureRow.extractor == extractor))
            if rows:
                s.execute(sqlite_insert(LocalFeatureRow), rows)
            return len(rows)

    def drop_other_features(self, family: str, keep: Collection[str]) -> int:
        """Forget every record of extractors named ``family``* but those in ``keep``:
        details no search will read again. Returns the records deleted.

        Raises:
            CatalogError: the catalog could not be written (busy past its timeout).
        """
        try:
            with self._sessions.begin() as s:
                # The distinct names come from the extractor index; the delete then
                # touches only the rows it removes (a LIKE would scan the whole table).
                names = [n for n in s.scalars(select(LocalFeatureRow.extractor).distinct())
                         if n.startswith(family) and n not in keep]
                if not names:
                    return 0
                result = s.execute(delete(LocalFeatureRow)
                                   .where(LocalFeatureRow.extractor.in_(names)))
                return int(getattr(result, "rowcount", 0) or 0)
        except OperationalError as exc:
            raise CatalogError(f"cannot forget old photo details: {exc.orig}") from exc

    def drop_features(self, ids: Iterable[int], extractor: str) -> None:
        """Forget damaged records; the next indexing run computes them again."""
        id_list = [int(i) for i in ids]
        if not id_list:
            return
        with self._sessions.begin() as s:
            s.execute(delete(LocalFeatureRow).where(LocalFeatureRow.photo_id.in_(id_list),
                                                    LocalFeatureRow.extractor == extractor))


def codec_digest(codec: bytes) -> str:
    """What names a codec's bytes in ``vector_codecs.digest``."""
    return hashlib.blake2b(codec, digest_size=16).hexdigest()


class _NothingToDo(Exception):
    """Rolls a write transaction back that found nothing to change."""


def _vector_bytes(vector: np.ndarray) -> bytes:
    """A vector as stored: uint8 product codes as they are, anything else as float16."""
    if vector.dtype == np.uint8:
        return np.ascontiguousarray(vector).tobytes()
    return np.asarray(vector, dtype=np.float16).tobytes()


def _check_coding(s: Session, model: str, vectors: Sequence[np.ndarray]) -> None:
    """Codes exactly when ``model`` has a codec, of its size: a writer that coded (or not)
    before a compression or its undoing committed must not mix the two kinds."""
    row = s.get(VectorCodecRow, model)
    want = None if row is None else int(row.code_size)
    for vector in vectors:
        coded = vector.dtype == np.uint8
        if coded != (want is not None) or (coded and vector.size != want):
            raise VectorKindChanged(f"the vectors of {model} are now stored "
                               f"{'as product codes' if want else 'as float16'}: "
                               "this batch was prepared for the other kind")


def _has_vector(model: str) -> Any:
    return (select(EmbeddingRow.photo_id)
            .where(EmbeddingRow.model == model, EmbeddingRow.photo_id == PhotoRow.id)
            .exists())


def _has_features(extractor: str | None) -> Any:
    if extractor is None:
        return literal(False)
    return (select(LocalFeatureRow.photo_id)
            .where(LocalFeatureRow.extractor == extractor,
                   LocalFeatureRow.photo_id == PhotoRow.id, _same_hash())
            .exists())


def _same_hash() -> Any:
    # A record made before the photo's bytes changed never counts (NULL == NULL too).
    return LocalFeatureRow.content_hash.is_not_distinct_from(PhotoRow.content_hash)


def _subtrees_key(folder_id: int | str) -> str:
    return f"subtrees:{folder_id}"


def _decode_subtrees(value: str | None) -> SubtreeMemory:
    data = json.loads(value) if value else {}
    return SubtreeMemory({Path(p): int(dev) for p, dev in data.get("mounts", [])},
                         {Path(p): str(why) for p, why in data.get("offline", [])})


def _utc(moment: datetime | None) -> datetime | None:
    """The catalog stores naive UTC; readers get it marked as UTC, never taken for local."""
    return None if moment is None else moment.replace(tzinfo=UTC)

