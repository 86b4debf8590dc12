"""The FAISS inner-product index over photo ids, and its atomic on-disk form.

The file is a cache of the catalog's vectors: it records the catalog generation and
model it reflects, so a mismatch is detected on open and answered with a rebuild.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from imagesearch.core.native_libs import guard_openmp
from imagesearch.errors import IndexFileError

_MAGIC = b"ISIX"
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class IndexHeader:
    model_id: str
    dim: int
    generation: int
    count: int
    checksum: str


class VectorIndex:
    """Exact inner-product search (IDMap2 over Flat) keyed by catalog photo id.

    Thread-safe: every read and write of the FAISS object takes one lock.
    """

    def __init__(self, dim: int, model_id: str, generation: int = 0,
                 index: Any | None = None) -> None:
        faiss = _faiss()
        self.dim = dim
        self.model_id = model_id
        self.generation = generation
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._lock = threading.RLock()

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, dim: int, model_id: str,
              generation: int) -> VectorIndex:
        index = cls(dim, model_id, generation)
        if len(ids):
            index.add(ids, vectors)
        return index

    def __len__(self) -> int:
        with self._lock:
            return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        faiss = _faiss()
        with self._lock:
            return np.asarray(faiss.vector_to_array(self._index.id_map), dtype=np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace vectors for ``ids``."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(ids):
            raise ValueError(f"expected {len(ids)}x{self.dim} vectors, got {vectors.shape}")
        with self._lock:
            self._remove(ids)
            self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        with self._lock:
            return self._remove(np.ascontiguousarray(ids, dtype=np.int64))

    def _remove(self, ids: np.ndarray) -> int:
        faiss = _faiss()
        if len(ids) == 0 or self._index.ntotal == 0:
            return 0
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; ``allowed`` restricts to those ids. -1 pads."""
        faiss = _faiss()
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n = len(self)
        if n == 0 or k <= 0:
            return (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0),
                                                                       np.int64))
        k = min(k, n)
        if allowed is None:
            # FAISS is not safe to read while another thread adds or removes vectors.
            with self._lock:
                scores, ids = self._index.search(queries, k)
            return scores, ids
        if len(allowed) == 0:
            return (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0),
                                                                       np.int64))
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        params = faiss.SearchParameters()
        params.sel = selector  # ``selector`` must outlive the search: FAISS keeps a pointer
        with self._lock:
            scores, ids = self._index.search(queries, min(k, len(allowed)), params=params)
        return scores, ids

    # Persistence ---------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write atomically: temp file in the same folder, fsync, rename.

        Raises:
            IndexFileError: the file could not be written; any previous file is intact.
        """
        write_index_file(path, self.to_bytes())

    def to_bytes(self) -> bytes:
        """The whole file's content: a consistent snapshot taken under the index's lock.

        Copying memory is quick; writing it out is not, and is left to the caller, so a
        save never holds up a search.
        """
        faiss = _faiss()
        with self._lock:
            blob = bytes(faiss.serialize_index(self._index))
            header = IndexHeader(self.model_id, self.dim, self.generation, len(self),
                                 xxhash.xxh3_64_hexdigest(blob))
        head_bytes = json.dumps(_asdict(header)).encode()
        return _MAGIC + struct.pack("<II", _FORMAT, len(head_bytes)) + head_bytes + blob

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (each must be present)."""
        with self._lock:
            return np.stack([self._index.reconstruct(int(i)) for i in ids]) if len(ids) \
                else np.zeros((0, self.dim), np.float32)

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        """Read a saved index.

        Raises:
            IndexFileError: missing, truncated, corrupt, or of another format.
        """
        faiss = _faiss()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise IndexFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
        header = read_header(data, path)
        blob = data[12 + _head_len(data):]
        if xxhash.xxh3_64_hexdigest(blob) != header.checksum:
            raise IndexFileError(f"{path} is damaged (checksum mismatch)")
        try:
            index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        except RuntimeError as exc:
            raise IndexFileError(f"{path} is not a readable FAISS index: {exc}") from exc
        if index.d != header.dim or index.ntotal != header.count:
            raise IndexFileError(f"{path} does not match its own header")
        return cls(header.dim, header.model_id, header.generation, index)


def write_index_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    Raises:
        IndexFileError: the file could not be written; any previous file is intact.
    """
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".",
                                         suffix=".tmp", delete=False) as tmp:
            tmp_name = tmp.name
            tmp.write(data)
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


def _faiss() -> Any:
    """FAISS, imported on first use (torch's OpenMP runtime may be loaded already)."""
    guard_openmp()
    import faiss

    return faiss


def _head_len(data: bytes) -> int:
    return int(struct.unpack("<II", data[4:12])[1])


def read_header(data: bytes, path: Path) -> IndexHeader:
    if len(data) < 12 or data[:4] != _MAGIC:
        raise IndexFileError(f"{path} is not an imagesearch index file")
    version, n = struct.unpack("<II", data[4:12])
    if version != _FORMAT:
        raise IndexFileError(f"{path} has index format {version}, expected {_FORMAT}")
    try:
        raw = json.loads(data[12:12 + n])
        return IndexHeader(str(raw["model_id"]), int(raw["dim"]), int(raw["generation"]),
                           int(raw["count"]), str(raw["checksum"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexFileError(f"{path} has a damaged header") from exc


def _asdict(header: IndexHeader) -> dict[str, Any]:
    return {"model_id": header.model_id, "dim": header.dim, "generation": header.generation,
            "count": header.count, "checksum": header.checksum}


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
