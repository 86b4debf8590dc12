"""A saved index read in place from its memory map, with changes kept on top of it.

FAISS aborts the whole process when a mapped index is changed, so every test that
changes a mapped index here would crash pytest if a change ever reached the base.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imagesearch.core import vector_index
from imagesearch.core.index_family import IVF_SQ8, train_ivf
from imagesearch.core.index_file import (
    Change,
    append_changes,
    delta_path,
    pack_index,
    start_delta_log,
)
from imagesearch.core.vector_index import VectorIndex, load_saved
from imagesearch.errors import IndexFileError

pytestmark = pytest.mark.skipif(not vector_index.MAP_FILES,
                                reason="indexes are read into memory on Windows")

D = 16


def _unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _index(family: str, n: int = 600) -> VectorIndex:
    ids = np.arange(1000, 1000 + n, dtype=np.int64)
    vectors = _unit(n)
    if family == IVF_SQ8:
        trained, on = train_ivf(vectors)  # 128 lists for 600 vectors
        index = VectorIndex.from_trained(trained, ids, vectors, "m", 5, nprobe=32,
                                         trained_on=on)
    else:
        index = VectorIndex.build(ids, vectors, D, "m", 5)
    return index


def _saved(tmp_path: Path, index: VectorIndex) -> Path:
    path = tmp_path / "m.faiss"
    index.save(path)
    return path


def _both_ways(tmp_path: Path, family: str) -> tuple[Path, VectorIndex, VectorIndex]:
    """A saved index, and the same read in place and read into memory."""
    path = _saved(tmp_path, _index(family))
    return (path, VectorIndex.open_in_place(path)[0],
            VectorIndex.from_bytes(path.read_bytes(), path)[0])


def _change(index: VectorIndex, *, seed: int) -> Change:
    """Replace 30 photos, remove 40 (and two never there), add 50 new ones."""
    rng = np.random.default_rng(seed)
    present = np.sort(index.ids())
    replaced = rng.choice(present, 30, replace=False)
    removed = np.concatenate([rng.choice(np.setdiff1d(present, replaced), 40, replace=False),
                              [7, 8]])
    new = np.arange(5000 + 100 * seed, 5050 + 100 * seed)
    added = np.concatenate([replaced, new]).astype(np.int64)
    return Change(index.generation, index.generation + 1, removed.astype(np.int64), added,
                  _unit(len(added), seed=seed + 100))


@pytest.mark.parametrize("family", ["flat", IVF_SQ8])
def test_an_index_read_in_place_answers_as_one_read_into_memory(tmp_path: Path,
                                                               family: str) -> None:
    path = _saved(tmp_path, _index(family))
    in_place, checksum, size = VectorIndex.open_in_place(path)
    in_memory, checksum_2 = VectorIndex.from_bytes(path.read_bytes(), path)
    assert in_place.mapped and not in_memory.mapped
    assert (checksum, size) == (checksum_2, path.stat().st_size)
    assert (in_place.family, in_place.nprobe, in_place.generation) == \
        (in_memory.family, in_memory.nprobe, in_memory.generation)
    queries = _unit(5, seed=3)
    for a, b in zip(in_place.search(queries, 20), in_memory.search(queries, 20), strict=True):
        np.testing.assert_array_equal(a, b)
    allowed = np.arange(1000, 1100)
    for a, b in zip(in_place.search(queries, 20, allowed),
                    in_memory.search(queries, 20, allowed), strict=True):
        np.testing.assert_array_equal(a, b)
    some = np.array([1000, 1333, 1599])
    np.testing.assert_array_equal(in_place.vectors_of(some), in_memory.vectors_of(some))
    # Saved as it was read (the direct map's hashtable may serialise in another order).
    for snapshot in (in_place.snapshot(), in_memory.snapshot()):
        copy = tmp_path / "copy.faiss"
        copy.write_bytes(pack_index(*snapshot))
        np.testing.assert_array_equal(VectorIndex.load(copy).search(queries, 20)[1],
                                      in_memory.search(queries, 20)[1])


@pytest.mark.parametrize("family", ["flat", IVF_SQ8])
def test_changes_on_top_of_a_mapped_base_equal_the_same_changes_made_in_memory(
        tmp_path: Path, family: str) -> None:
    _, in_place, in_memory = _both_ways(tmp_path, family)
    for seed in (1, 2):
        change = _change(in_memory, seed=seed)
        in_place.apply(change)
        in_memory.apply(change)
    assert in_place.remove(np.array([1001, 1001, 3])) == in_memory.remove(
        np.array([1001, 3])) == 1
    in_place.add(np.array([1002]), _unit(1, seed=9))  # a replacement outside a change
    in_memory.add(np.array([1002]), _unit(1, seed=9))
    assert in_place.mapped
    assert len(in_place) == len(in_memory)
    assert sorted(in_place.ids().tolist()) == sorted(in_memory.ids().tolist())
    queries = np.concatenate([_unit(6, seed=4), _unit(1, seed=9)])
    allowed = np.concatenate([np.arange(1000, 1300), np.arange(5100, 5120)])
    for subset in (None, allowed):
        (s1, i1), (s2, i2) = in_place.search(queries, 30, subset), in_memory.search(
            queries, 30, subset)
        if family == "flat":
            np.testing.assert_array_equal(i1, i2)
            np.testing.assert_allclose(s1, s2, atol=1e-6)
        else:  # the overlay is searched exactly, the lists read 8-bit codes
            assert np.mean([len(set(a[:10]) & set(b[:10])) for a, b in zip(i1, i2,
                                                                           strict=True)]) >= 8
        assert i1[-1][0] == 1002  # the replaced vector, not the base's old one
        assert not set(i1[i1 >= 0].tolist()) & {7, 8, 1001}
        if subset is not None:
            assert set(i1[i1 >= 0].tolist()) <= set(subset.tolist())
    some = np.array([1000, 1002, 5105, 5210])
    np.testing.assert_allclose(in_place.vectors_of(some), in_memory.vectors_of(some),
                               atol=1e-6)


@pytest.mark.parametrize("family", ["flat", IVF_SQ8])
def test_a_mapped_base_with_changes_is_saved_whole_and_read_back_in_place(
        tmp_path: Path, family: str) -> None:
    path, in_place, in_memory = _both_ways(tmp_path, family)
    change = _change(in_memory, seed=1)
    in_place.apply(change)
    in_memory.apply(change)
    version = in_place.version
    header, _ = in_place.snapshot()
    in_place.save(path)
    # The process's old map still answers while the file is replaced under it.
    assert in_place.adopt_file(path, header.checksum, version)
    assert in_place.mapped and in_place._overlay is None
    assert sorted(in_place.ids().tolist()) == sorted(in_memory.ids().tolist())
    queries = _unit(6, seed=4)
    (_, i1), (_, i2) = in_place.search(queries, 30), in_memory.search(queries, 30)
    np.testing.assert_array_equal(i1, i2)  # the same codes, now both from one index
    again = VectorIndex.open_in_place(path)[0]
    np.testing.assert_array_equal(again.search(queries, 30)[1], i2)


def test_a_save_is_not_adopted_after_a_later_change_or_from_another_file(
        tmp_path: Path) -> None:
    index = _index("flat")
    path = _saved(tmp_path, index)
    header, _ = index.snapshot()
    version = index.version
    index.add(np.array([9999]), _unit(1, seed=5))
    assert not index.adopt_file(path, header.checksum, version)  # the change is not in it
    assert not index.mapped and 9999 in index.ids()
    assert not index.adopt_file(path, "another file", index.version)
    assert not index.adopt_file(tmp_path / "missing.faiss", header.checksum, index.version)
    assert not index.mapped and len(index) == 601


def test_the_delta_log_is_replayed_on_top_of_the_mapped_base(tmp_path: Path) -> None:
    index = _index("flat")
    path = _saved(tmp_path, index)
    start_delta_log(delta_path(path), index.snapshot()[0].checksum)
    in_memory = VectorIndex.from_bytes(path.read_bytes(), path)[0]
    changes = []
    for seed in (1, 2, 3):
        change = _change(in_memory, seed=seed)
        in_memory.apply(change)
        changes.append(change)
    append_changes(delta_path(path), changes)
    saved = load_saved(path)
    assert saved.index.mapped and saved.extendable and saved.log_records == 3
    assert saved.index.generation == in_memory.generation == 8
    queries = _unit(4, seed=7)
    np.testing.assert_array_equal(saved.index.search(queries, 25)[1],
                                  in_memory.search(queries, 25)[1])


@pytest.mark.parametrize("damage", ["empty", "truncate", "flip", "missing"])
def test_a_damaged_file_is_an_index_error_when_read_in_place(tmp_path: Path,
                                                              damage: str) -> None:
    path = _saved(tmp_path, _index("flat", n=50))
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    else:
        path.unlink()
    with pytest.raises(IndexFileError):
        VectorIndex.open_in_place(path)


# The store: what a process opens, and what a save gives back ------------------------------

def test_a_store_reads_its_saved_index_in_place_and_keeps_changes_on_top(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagesearch.services import vector_store
    from tests.test_index_scale import MODEL, Library, _clustered

    monkeypatch.setattr(vector_store, "MERGE_MIN_BYTES", 0)
    library = Library(tmp_path)
    try:
        store = library.store()
        ids = library.add_to(store, _clustered(200))
        store.flush()  # a whole base: the index in memory is now read from it in place
        index = store.index()
        assert index is not None and index.mapped
        store.close()
        again = library.store()
        index = again.index()
        assert index is not None and index.mapped and again.last_rebuild_reason is None
        more = library.add_to(again, _clustered(10, seed=4))  # small: onto the log
        library.catalog.remove_photos(ids[:3].tolist())
        again.remove(ids[:3], library.catalog.last_commit())
        again.flush()
        assert index.mapped and index._overlay is not None and not index._overlay.empty
        expected = library.catalog.vector_ids(MODEL)
        assert np.array_equal(np.sort(index.ids()), expected)
        assert set(more.tolist()) <= set(index.search(_clustered(10, seed=4), 1)[1][:, 0]
                                         .tolist())
        library.add_to(again, _clustered(80, seed=5))  # past a quarter: a whole base
        again.flush()
        assert index.mapped and index._overlay is None  # folded, written, read in place
        again.close()
        reopened, rebuilt = library.reopened()
        assert rebuilt is None and reopened is not None and reopened.mapped
        assert np.array_equal(np.sort(reopened.ids()), library.catalog.vector_ids(MODEL))
    finally:
        library.catalog.close()



@pytest.mark.parametrize("family", ["flat", IVF_SQ8])
def test_an_empty_mapped_base_with_photos_added_on_top_is_searched(tmp_path: Path,
                                                                   family: str) -> None:
    index = _index(family)
    index.remove(index.ids())
    path = _saved(tmp_path, index)
    empty = VectorIndex.open_in_place(path)[0]
    assert empty.mapped and len(empty) == 0
    empty.add(np.array([1, 2, 3]), _unit(3, seed=8))
    _, found = empty.search(_unit(2, seed=8), 10)
    assert found.shape == (2, 3) and found[0][0] == 1 and found[1][0] == 2
    _, within = empty.search(_unit(1, seed=8), 10, np.array([2, 3, 99]))
    assert sorted(within[0][within[0] >= 0].tolist()) == [2, 3]


def test_many_changes_make_the_index_its_own_copy(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_index, "OVERLAY_MAX_ADDED", 60)
    _, in_place, in_memory = _both_ways(tmp_path, "flat")
    change = _change(in_memory, seed=1)  # 80 added: past the limit
    in_place.apply(change)
    in_memory.apply(change)
    assert not in_place.mapped and in_place._overlay is None
    queries = _unit(5, seed=4)
    np.testing.assert_array_equal(in_place.search(queries, 30)[1],
                                  in_memory.search(queries, 30)[1])
    in_place.add(np.array([1003]), _unit(1, seed=3))  # changed in place from now on
    assert 1003 in in_place.ids() and len(in_place) == len(in_memory)


def test_a_snapshot_with_changes_on_top_leaves_an_index_of_its_own(tmp_path: Path) -> None:
    path, in_place, in_memory = _both_ways(tmp_path, "flat")
    change = _change(in_memory, seed=1)
    in_place.apply(change)
    in_memory.apply(change)
    header, _ = in_place.snapshot()
    version = in_place.version
    in_place.save(path)
    in_place.add(np.array([1003]), _unit(1, seed=3))  # a commit while the file is written
    assert not in_place.adopt_file(path, header.checksum, version)
    assert not in_place.mapped and in_place._overlay is None  # nothing piles up on top
    in_memory.add(np.array([1003]), _unit(1, seed=3))
    queries = _unit(5, seed=4)
    np.testing.assert_array_equal(in_place.search(queries, 30)[1],
                                  in_memory.search(queries, 30)[1])


def test_the_vector_of_a_photo_removed_from_a_mapped_base_is_not_handed_out(
        tmp_path: Path) -> None:
    _, in_place, _ = _both_ways(tmp_path, "flat")
    in_place.remove(np.array([1005]))
    with pytest.raises(RuntimeError):
        in_place.vectors_of(np.array([1004, 1005]))
    assert in_place.vectors_of(np.array([1004])).shape == (1, D)


def test_many_photos_removed_make_the_index_its_own_copy(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_index, "OVERLAY_MAX_HIDDEN", 100)
    _, in_place, in_memory = _both_ways(tmp_path, "flat")
    gone = np.arange(1000, 1150)
    in_place.remove(gone)
    in_memory.remove(gone)
    assert not in_place.mapped and len(in_place) == len(in_memory) == 450
    queries = _unit(5, seed=4)
    np.testing.assert_array_equal(in_place.search(queries, 30)[1],
                                  in_memory.search(queries, 30)[1])


_MEASURE = """
import sys
from pathlib import Path
import numpy as np
from imagesearch.core.native_libs import faiss_module
from imagesearch.core.vector_index import VectorIndex
def private_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
faiss_module()
before = private_mb()
if sys.argv[2] == "in place":
    index = VectorIndex.open_in_place(Path(sys.argv[1]))[0]
else:
    index = VectorIndex.load(Path(sys.argv[1]))
query = np.asarray(index.vectors_of(np.array([0])))
assert index.search(query, 5)[1][0][0] == 0  # every vector compared: every page read
print(private_mb() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_a_base_read_in_place_takes_no_private_memory_for_its_vectors(tmp_path: Path) -> None:
    import subprocess
    import sys

    vectors = np.random.default_rng(0).normal(size=(40_000, 512)).astype(np.float32)
    path = _saved(tmp_path, VectorIndex.build(np.arange(40_000), vectors, 512, "m", 1))
    del vectors  # 80 MB of vectors in the file

    def private_mb(way: str) -> float:  # in a fresh process: a clean heap
        out = subprocess.run([sys.executable, "-c", _MEASURE, str(path), way],
                             capture_output=True, text=True, check=True, timeout=120)
        return float(out.stdout.split()[-1])

    assert private_mb("in place") < 30
    assert private_mb("in memory") > 70  # the same file read into memory: its vectors


def test_a_file_system_without_memory_maps_reads_the_base_into_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def no_maps(path: Path) -> np.ndarray:
        raise OSError(errno.ENODEV, "No such device")

    index = _index("flat")
    path = _saved(tmp_path, index)
    monkeypatch.setattr(vector_index, "map_file", no_maps)
    saved = load_saved(path)
    assert not saved.index.mapped and saved.base_bytes == path.stat().st_size
    queries = _unit(3, seed=2)
    np.testing.assert_array_equal(saved.index.search(queries, 10)[1],
                                  index.search(queries, 10)[1])
    assert not saved.index.adopt_file(path, saved.checksum, saved.index.version)
