"""The FAISS index: add, replace, remove, search, filter, atomic save and checked load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imagesearch.core.vector_index import VectorIndex
from imagesearch.errors import IndexFileError


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_finds_itself_first() -> None:
    vecs = _unit(50, 16)
    ids = np.arange(100, 150)
    index = VectorIndex.build(ids, vecs, 16, "m", 3)
    scores, found = index.search(vecs[7], 5)
    assert found[0][0] == 107 and scores[0][0] == pytest.approx(1.0, abs=1e-5)
    assert list(scores[0]) == sorted(scores[0], reverse=True)


def test_add_replaces_and_remove_removes() -> None:
    index = VectorIndex(8, "m")
    index.add(np.array([1, 2]), _unit(2, 8))
    index.add(np.array([2]), _unit(1, 8, seed=9))  # replaces, never duplicates
    assert len(index) == 2 and sorted(index.ids().tolist()) == [1, 2]
    assert index.remove(np.array([1, 42])) == 1
    assert index.ids().tolist() == [2]


def test_filter_restricts_results() -> None:
    vecs = _unit(20, 8)
    index = VectorIndex.build(np.arange(20), vecs, 8, "m", 0)
    _, found = index.search(vecs[0], 10, allowed=np.array([3, 4, 5]))
    assert set(found[0].tolist()) <= {3, 4, 5}
    assert index.search(vecs[0], 10, allowed=np.array([], dtype=np.int64))[1].size == 0


def test_save_load_round_trip(tmp_path: Path) -> None:
    vecs = _unit(30, 8)
    index = VectorIndex.build(np.arange(30) * 2, vecs, 8, "ViT/x", 17)
    path = tmp_path / "idx.faiss"
    index.save(path)
    loaded = VectorIndex.load(path)
    assert (loaded.model_id, loaded.generation, loaded.dim, len(loaded)) == ("ViT/x", 17, 8, 30)
    assert sorted(loaded.ids().tolist()) == list(range(0, 60, 2))
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "missing"])
def test_damaged_files_are_detected(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "idx.faiss"
    VectorIndex.build(np.arange(10), _unit(10, 8), 8, "m", 1).save(path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "garbage":
        path.write_bytes(b"nonsense")
    else:
        path.unlink()
    with pytest.raises(IndexFileError):
        VectorIndex.load(path)


def test_failed_save_keeps_previous_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "idx.faiss"
    VectorIndex.build(np.arange(5), _unit(5, 8), 8, "m", 1).save(path)
    before = path.read_bytes()

    def disk_full(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", disk_full)
    with pytest.raises(IndexFileError, match="No space left"):
        VectorIndex.build(np.arange(9), _unit(9, 8), 8, "m", 2).save(path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_an_index_file_of_the_first_format_still_opens(tmp_path: Path) -> None:
    """Files written before index families (format 1: no family, exact only) load as exact."""
    import json
    import struct

    path = tmp_path / "idx.faiss"
    VectorIndex.build(np.arange(12), _unit(12, 8), 8, "m", 5).save(path)
    data = path.read_bytes()
    head_len = struct.unpack("<II", data[4:12])[1]
    header = json.loads(data[12:12 + head_len])
    old = json.dumps({k: header[k] for k in ("model_id", "dim", "generation", "count",
                                             "checksum")}).encode()
    path.write_bytes(b"ISIX" + struct.pack("<II", 1, len(old)) + old + data[12 + head_len:])
    loaded = VectorIndex.load(path)
    assert (loaded.family, loaded.generation, len(loaded)) == ("flat", 5, 12)


def test_on_windows_the_saved_index_is_read_into_memory(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from imagesearch.core import vector_index
    from imagesearch.core.index_file import Change, append_changes, delta_path, start_delta_log
    from imagesearch.core.vector_index import load_saved

    monkeypatch.setattr(vector_index, "MAP_FILES", False)
    index = VectorIndex.build(np.arange(40), _unit(40, 8), 8, "m", 1)
    path = tmp_path / "idx.faiss"
    index.save(path)
    start_delta_log(delta_path(path), index.snapshot()[0].checksum)
    change = Change(1, 2, np.array([3]), np.array([5, 99]), _unit(2, 8, seed=4))
    append_changes(delta_path(path), [change])
    index.apply(change)
    saved = load_saved(path)
    assert not saved.index.mapped and saved.log_records == 1 and len(saved.index) == 40
    assert not saved.index.adopt_file(path, saved.checksum, saved.index.version)
    queries = _unit(4, 8, seed=7)
    np.testing.assert_array_equal(saved.index.search(queries, 25)[1],
                                  index.search(queries, 25)[1])
