"""A library that outgrows exact search: the family chosen by size and memory, trained in
the background and swapped in with nothing missed, and saved as a base plus a delta log
that grows with the changes, not with the library."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagesearch.core import index_family
from imagesearch.core.index_family import FLAT, IVF_SQ8, choose_family
from imagesearch.core.index_file import (
    Change,
    append_changes,
    read_changes,
    start_delta_log,
)
from imagesearch.core.vector_index import VectorIndex, load_saved
from imagesearch.services import index_upgrade, vector_store
from imagesearch.services.vector_store import VectorStore
from imagesearch.storage.catalog import Catalog, PhotoUpdate
from imagesearch.storage.database import open_catalog_engine
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(120)

DIM = 16
MODEL = "test-model"


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in 40 clusters, the shape photo embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, DIM))
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Library:
    """A catalog of fabricated photos with vectors (no files, no model)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.catalog = Catalog(open_catalog_engine(root / "catalog.sqlite3"))
        self.folder = self.catalog.add_folder(root / "photos")
        self.count = 0

    def add(self, vectors: np.ndarray) -> tuple[np.ndarray, Any]:
        updates = [PhotoUpdate(self.root / "photos" / f"{self.count + i}.jpg", self.folder,
                               1, 1.0, f"{self.count + i:032x}", vector=v)
                   for i, v in enumerate(vectors)]
        self.count += len(vectors)
        ids = np.asarray(self.catalog.store(MODEL, updates), dtype=np.int64)
        return ids, self.catalog.last_commit()

    def add_to(self, store: VectorStore, vectors: np.ndarray) -> np.ndarray:
        """Add photos with ``vectors`` and mirror the commit in ``store``; their ids."""
        ids, commit = self.add(vectors)
        store.apply(ids, vectors, np.zeros(0, np.int64), commit)
        return ids

    def store(self, **kwargs: Any) -> VectorStore:
        return VectorStore(self.catalog, self.root / "index", MODEL, save_delay_s=0,
                           **kwargs)

    def reopened(self) -> tuple[VectorIndex | None, str | None]:
        """What a new process opens: the index, and why it was rebuilt (None: read back)."""
        store = self.store()
        try:
            return store.index(), store.last_rebuild_reason
        finally:
            store.close()


@pytest.fixture
def library(tmp_path: Path) -> Any:
    lib = Library(tmp_path)
    yield lib
    lib.catalog.close()


# Choosing -----------------------------------------------------------------------------------

def test_the_family_follows_size_and_memory() -> None:
    assert choose_family(1_000, 512, 1024).family == FLAT
    assert choose_family(150_000, 512, 1024).family == FLAT
    assert choose_family(300_000, 512, 1024).family == IVF_SQ8  # too many to scan
    tight = choose_family(150_000, 512, 200)  # 293 MB of vectors over a 200 MB budget
    assert tight.family == IVF_SQ8 and "200 MB budget" in tight.reason
    assert choose_family(3_000, 512, 1).family == FLAT  # too few to be worth training


@pytest.mark.parametrize("two_level", [False, True])
def test_probed_lists_are_calibrated_to_the_recall_target(
        two_level: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # 8,000 vectors get 256 lists: learned in two levels when that threshold is lower.
    monkeypatch.setattr(index_family, "TWO_LEVEL_LISTS", 64 if two_level else 1 << 20)
    vectors = _clustered(8_000)
    ids = np.arange(8_000) * 5 + 3
    trained, on = index_family.train_ivf(vectors)
    if two_level:  # FAISS kept the lists learned in two levels (it trained the coder only)
        from imagesearch.core.clustering import spherical_two_level

        np.testing.assert_array_equal(trained.quantizer.reconstruct_n(0, trained.nlist),
                                      spherical_two_level(vectors, 256, 0, refine=2))
    index = VectorIndex.from_trained(trained, ids, vectors, MODEL, 0, 0, on)
    nprobe, recall = index_family.calibrate_nprobe(trained, ids, vectors)
    assert recall >= index_family.RECALL_TARGET and 1 <= nprobe <= trained.nlist
    index.nprobe = nprobe
    # Measured independently of the calibration's own sample: fresh queries.
    queries = _clustered(100, seed=7)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    _, found = index.search(queries, 10)
    hit = np.mean([len(set(ids[e]) & set(f)) / 10 for e, f in zip(exact, found, strict=True)])
    assert hit >= 0.9


def test_an_approximate_index_adds_replaces_removes_filters_and_round_trips(
        tmp_path: Path) -> None:
    vectors = _clustered(6_000)
    ids = np.arange(6_000, dtype=np.int64)
    trained, on = index_family.train_ivf(vectors)
    index = VectorIndex.from_trained(trained, ids, vectors, MODEL, 4, 8, on)
    index.add(np.array([5]), vectors[9:10])  # replaces, never duplicates
    assert len(index) == 6_000 and index.search(vectors[9], 2)[1][0].tolist()[:2] in (
        [5, 9], [9, 5])
    assert index.remove(np.array([7, 123_456])) == 1 and 7 not in index.ids()
    # A small folder is searched through every list: its photos are all found.
    allowed = np.array([11, 2_500, 5_999, 7, 999_999])
    _, found = index.search(vectors[0], 10, allowed)
    assert set(found[0][found[0] >= 0].tolist()) == {11, 2_500, 5_999}
    index.save(tmp_path / "ivf.faiss")
    loaded = VectorIndex.load(tmp_path / "ivf.faiss")
    assert (loaded.family, loaded.nprobe, loaded.trained_on) == (IVF_SQ8, 8, 6_000)
    assert np.array_equal(np.sort(loaded.ids()), np.sort(index.ids()))


# The delta log ------------------------------------------------------------------------------

def _change(before: int, n: int, seed: int) -> Change:
    return Change(before, before + 1, np.array([seed], np.int64),
                  np.arange(n, dtype=np.int64) + 100 * seed, _clustered(n, seed))


def test_the_delta_log_keeps_intact_records_and_stops_at_a_torn_one(tmp_path: Path) -> None:
    log = tmp_path / "x.delta"
    start_delta_log(log, "base-a")
    append_changes(log, [_change(1, 3, 1), _change(2, 0, 2)])
    size = append_changes(log, [_change(3, 2, 3)])
    got = read_changes(log, "base-a").changes
    assert [(c.before, c.after, len(c.added)) for c in got] == [(1, 2, 3), (2, 3, 0), (3, 4, 2)]
    assert np.allclose(got[0].vectors, _clustered(3, 1), atol=1e-3)  # float16 on disk
    assert read_changes(log, "base-b").changes == []  # a log for another base is ignored
    with open(log, "r+b") as f:  # a crash in the middle of the last append
        f.truncate(size - 7)
    torn = read_changes(log, "base-a")
    assert [c.after for c in torn.changes] == [2, 3] and not torn.clean


def test_a_saved_index_is_its_base_plus_its_log(library: Library) -> None:
    store = library.store()
    ids = library.add_to(store, _clustered(50))
    store.flush()
    base = store.path.read_bytes()
    more, commit = library.add(_clustered(5, seed=3))
    store.apply(more, _clustered(5, seed=3), ids[:2], commit)
    library.catalog.remove_photos(ids[:2].tolist())
    store.remove(ids[:2], library.catalog.last_commit())
    store.flush()
    assert store.path.read_bytes() == base  # the base is not rewritten for a few photos
    assert len(read_changes(store.delta, load_saved(store.path).checksum).changes) == 2
    store.close()
    index, rebuilt = library.reopened()
    assert rebuilt is None  # opened from the files, no rebuild
    assert index is not None and index.generation == library.catalog.generation()
    assert np.array_equal(np.sort(index.ids()), np.sort(library.catalog.vector_ids(MODEL)))


def test_a_torn_log_means_a_rebuild_from_the_catalog(library: Library) -> None:
    store = library.store()
    library.add_to(store, _clustered(20))
    store.flush()
    more = library.add_to(store, _clustered(3, seed=5))
    store.close()
    with open(store.delta, "r+b") as f:
        f.truncate(store.delta.stat().st_size - 3)
    index, rebuilt = library.reopened()
    assert rebuilt is not None and "generation" in rebuilt
    assert index is not None and set(more.tolist()) <= set(index.ids().tolist())


def test_a_long_log_is_folded_into_a_new_base(library: Library,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_store, "MERGE_MIN_BYTES", 0)
    store = library.store()
    library.add_to(store, _clustered(20))
    store.flush()
    first = store.path.read_bytes()
    more, commit = library.add(_clustered(30, seed=2))  # more than a quarter of the base
    store.apply(more, _clustered(30, seed=2), np.zeros(0, np.int64), commit)
    store.flush()
    assert store.path.read_bytes() != first
    assert read_changes(store.delta, load_saved(store.path).checksum).changes == []
    assert len(load_saved(store.path).index) == 50
    store.close()


# Growing past exact search ------------------------------------------------------------------

def test_a_library_that_outgrows_exact_search_gets_an_approximate_index_in_the_background(
        library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = _clustered(6_000)
    ids, _ = library.add(vectors)
    training, release = threading.Event(), threading.Event()
    real_train = index_upgrade.train_ivf

    def slow_train(x: np.ndarray) -> Any:
        training.set()
        assert release.wait(30)
        return real_train(x)

    monkeypatch.setattr(index_upgrade, "train_ivf", slow_train)
    store = library.store(flat_max=5_000)
    index = store.index()
    assert index is not None and index.family == FLAT  # exact at once, searchable
    assert training.wait(10)
    # Commits while the new index trains: journalled, and in the new index at the swap.
    fresh = _clustered(4, seed=9)
    late = library.add_to(store, fresh)
    library.catalog.remove_photos(ids[3:5].tolist())
    store.remove(ids[3:5], library.catalog.last_commit())
    assert store.index() is index and index.search(fresh[0], 1)[1][0][0] == late[0]
    release.set()
    wait_until(lambda: store.index() is not None and store.index().family == IVF_SQ8, timeout=60)
    swapped = store.index()
    assert swapped is not None
    assert swapped.generation == library.catalog.generation()
    assert np.array_equal(np.sort(swapped.ids()), np.sort(library.catalog.vector_ids(MODEL)))
    assert swapped.search(fresh[0], 1)[1][0][0] == late[0]
    assert not set(ids[3:5].tolist()) & set(swapped.ids().tolist())
    store.close()
    reopened = library.store(flat_max=5_000)
    index = reopened.index()
    assert reopened.last_rebuild_reason is None and index is not None
    assert index.family == IVF_SQ8 and index.nprobe >= 1
    reopened.close()


def test_a_one_shot_command_builds_the_family_before_it_exits(library: Library) -> None:
    vectors = _clustered(6_000)
    store = library.store(flat_max=5_000, background=False)
    library.add_to(store, vectors)
    assert store.index().family == FLAT  # type: ignore[union-attr]
    assert store.close() == ()
    saved = load_saved(store.path).index
    assert saved.family == IVF_SQ8 and saved.generation == library.catalog.generation()
    assert len(saved) == 6_000 and saved.recall >= index_family.RECALL_TARGET
    # `imagesearch status` describes it from the file's header, without loading it.
    line = library.store().describe()
    assert line is not None and line.startswith("approximate search over 6,000 photos")
    assert f"{saved.nprobe} lists probed" in line and "recall@10 0." in line


def test_a_search_only_command_never_trains(library: Library) -> None:
    library.add(_clustered(6_000))
    store = library.store(flat_max=5_000, background=False)
    assert store.index().family == FLAT  # type: ignore[union-attr]
    store.close()
    assert load_saved(store.path).index.family == FLAT
    assert library.store().describe() == "exact search over 6,000 photos"


def test_no_index_is_described_as_none(library: Library) -> None:
    assert library.store().describe() is None


def test_the_index_can_be_read_before_the_first_search(library: Library) -> None:
    """The app opens it in the background as the library opens: at a million photos
    reading it takes seconds that the first search should not wait for."""
    ids, commit = library.add(_clustered(30))
    first = library.store()
    first.apply(ids, _clustered(30), np.zeros(0, np.int64), commit)
    first.close()
    store = library.store()
    assert not store.is_open
    store.open_later()
    wait_until(lambda: store.is_open, timeout=60)
    assert store.last_rebuild_reason is None
    store.close()


def test_a_log_that_cannot_be_extended_is_replaced_by_a_whole_base(library: Library) -> None:
    """An index file from before delta logs has no log: appending would start a log with
    no header, which no replay reads, and every later save would be lost."""
    store = library.store()
    library.add_to(store, _clustered(20))
    store.close()
    store.delta.unlink()
    again = library.store()
    assert again.index() is not None and again.last_rebuild_reason is None
    more = library.add_to(again, _clustered(2, seed=4))
    again.close()
    index, rebuilt = library.reopened()
    assert rebuilt is None  # the save held the commit
    assert index is not None and set(more.tolist()) <= set(index.ids().tolist())


def test_many_small_commits_replay_to_the_same_index(library: Library,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_store, "MERGE_MAX_RECORDS", 10_000)
    store = library.store()
    library.add_to(store, _clustered(50))
    store.flush()
    for i in range(120):  # one photo at a time, as the watcher commits them
        vec = _clustered(1, seed=100 + i)
        new = library.add_to(store, vec)
        if i % 3 == 0:
            library.catalog.remove_photos([int(new[0])])
            store.remove(new, library.catalog.last_commit())
        store.flush()
    expected = np.sort(store.index().ids())  # type: ignore[union-attr]
    store.close()
    saved = load_saved(store.path)
    assert saved.log_records == 160 and saved.extendable  # 120 added, 40 removed
    assert np.array_equal(np.sort(saved.index.ids()), expected)
    assert saved.index.generation == library.catalog.generation()


def test_content_unlike_the_training_retrains_the_lists(library: Library) -> None:
    store = library.store(flat_max=5_000, background=False)
    library.add_to(store, _clustered(6_000))
    store.close()
    assert load_saved(store.path).index.trained_on == 6_000
    # Photos of another kind: clusters the lists never saw, which their codes distort.
    odd = _clustered(1_200, seed=11)
    again = library.store(flat_max=5_000, background=False)
    index = again.refresh()  # opened before the commit, as the write lane does
    assert index is not None and index.family == IVF_SQ8 and not index.drifted
    library.add_to(again, odd)
    assert again.index() is index and index.drifted
    again.close()  # a one-shot command retrains before it exits
    assert load_saved(store.path).index.trained_on == 7_200


def test_lists_that_miss_the_recall_target_keep_exact_search(
        library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_upgrade, "calibrate_nprobe",
                        lambda trained, ids, vectors: (int(trained.nlist), 0.9))
    store = library.store(flat_max=5_000, background=False)
    library.add_to(store, _clustered(6_000))
    assert store.close() == ()
    saved = load_saved(store.path).index
    assert saved.family == FLAT and saved.trained_on == 6_000
    again = library.store(flat_max=5_000, background=False)
    assert again.refresh() is not None
    library.add_to(again, _clustered(10, seed=8))
    assert not again.upgrade_now()  # not retried at about the same size


def test_a_failed_family_change_is_not_retried_on_every_commit(
        library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def broken(x: np.ndarray) -> Any:
        calls.append(len(x))
        raise MemoryError("out of memory")

    monkeypatch.setattr(index_upgrade, "train_ivf", broken)
    library.add(_clustered(6_000))
    store = library.store(flat_max=5_000)
    assert store.index() is not None
    wait_until(lambda: calls and store.upgrading is False, timeout=60)
    for seed in range(3):
        library.add_to(store, _clustered(5, seed=seed))
    time.sleep(0.2)
    assert len(calls) == 1
    assert store.index().family == FLAT  # type: ignore[union-attr]  # still serving
    store.close()


def test_a_refused_retraining_keeps_the_current_lists(
        library: Library, monkeypatch: pytest.MonkeyPatch) -> None:
    store = library.store(flat_max=5_000, background=False)
    library.add_to(store, _clustered(6_000))
    store.close()
    monkeypatch.setattr(index_upgrade, "calibrate_nprobe",
                        lambda trained, ids, vectors: (int(trained.nlist), 0.9))
    again = library.store(flat_max=5_000, background=False)
    index = again.refresh()
    assert index is not None and index.family == IVF_SQ8
    odd = _clustered(1_200, seed=11)  # drift: a retrain is due...
    library.add_to(again, odd)
    assert index.drifted
    assert not again.upgrade_now()  # ...and refused: the lists stay, not 2 GB of exact
    assert again.index() is index and index.family == IVF_SQ8
    assert not again.upgrade_now()  # and it is not tried again at this size
    again.close()


def test_one_id_twice_in_a_change_keeps_its_last_vector() -> None:
    vectors = _clustered(6_000)
    trained, on = index_family.train_ivf(vectors)
    for index in (VectorIndex.build(np.arange(10), vectors[:10], DIM, MODEL, 0),
                  VectorIndex.from_trained(trained, np.arange(6_000), vectors, MODEL, 0, 8,
                                           on)):
        fresh = _clustered(2, seed=99)
        index.apply(Change(0, 1, np.zeros(0, np.int64), np.array([3, 3]), fresh))
        assert int(np.sum(index.ids() == 3)) == 1
        assert index.search(fresh[1], 1)[1][0][0] == 3
        index.remove(np.array([3]))
        assert 3 not in index.ids()


def test_lists_learned_in_two_levels_are_unit_length_and_as_many_as_asked() -> None:
    from imagesearch.core.clustering import spherical_two_level

    vectors = _clustered(3_000, seed=4)
    centres = spherical_two_level(vectors, 256, seed=0)
    assert centres.shape == (256, DIM)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-5)
    again = spherical_two_level(vectors, 256, seed=0)
    np.testing.assert_array_equal(centres, again)  # seeded: the same lists every time
    assert not np.array_equal(centres, spherical_two_level(vectors, 256, seed=1))
    few = spherical_two_level(vectors[:40], 64, seed=0)  # cells with fewer points than
    assert few.shape == (64, DIM)                        # their share still give it


def test_refined_lists_fit_the_vectors_at_least_as_well() -> None:
    from imagesearch.core.clustering import spherical_two_level

    vectors = _clustered(4_000, seed=5)
    rough = spherical_two_level(vectors, 128, seed=0)
    refined = spherical_two_level(vectors, 128, seed=0, refine=2)
    assert refined.shape == rough.shape
    np.testing.assert_allclose(np.linalg.norm(refined, axis=1), 1.0, atol=1e-5)
    # Each vector's best inner product with a centre: refining does not make it worse.
    assert (vectors @ refined.T).max(axis=1).mean() > (vectors @ rough.T).max(axis=1).mean()
