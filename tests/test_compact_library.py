"""A compact library: each photo in at most 2 KB (product-coded vector plus fewer details),
its vectors coded in place in one transaction, searched through IVF-PQ over the same
codes, and made standard again by turning the codes back into float16."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagesearch.config import Settings
from imagesearch.core.feature_codec import record_size
from imagesearch.core.index_family import FLAT, IVF_PQ, choose_family
from imagesearch.core.local_features import COMPACT_LIBRARY_MODE, FEATURE_MODES
from imagesearch.core.vector_codec import CODE_BYTES, VectorCodec
from imagesearch.errors import CatalogError
from imagesearch.services import stored_vectors
from imagesearch.services.local_search import feature_mode
from imagesearch.services.stored_vectors import StoredVectors
from imagesearch.storage.catalog import PhotoUpdate
from tests.conftest import noise_jpeg
from tests.test_index_scale import Library

pytestmark = pytest.mark.timeout(180)

MODEL = "test-model"


def _clustered(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(60, dim))
    x = centres[rng.integers(0, 60, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# The codec ---------------------------------------------------------------------------------


def test_codes_round_trip_and_decoded_vectors_code_to_themselves() -> None:
    x = _clustered(3000)
    codec = VectorCodec.train(x, parts=16)
    codes = codec.encode(x)
    assert codes.shape == (3000, 16) and codes.dtype == np.uint8
    back = codec.decode(codes)
    cos = np.sum(back * x, axis=1) / np.linalg.norm(back, axis=1)
    assert cos.mean() > 0.9  # close to what they code, not equal
    # What the index stores is what the catalog stores: coding a decoded vector again
    # gives the same code.
    np.testing.assert_array_equal(codec.encode(back), codes)
    again = VectorCodec.from_bytes(codec.to_bytes())
    np.testing.assert_array_equal(again.centres, codec.centres)


def test_a_damaged_or_foreign_codec_is_refused() -> None:
    blob = VectorCodec.train(_clustered(600), parts=8).to_bytes()
    for bad in (blob[:10], blob[:-4], b"XX" + blob[2:],
                blob[:40] + bytes([blob[40] ^ 1]) + blob[41:]):
        with pytest.raises(CatalogError):
            VectorCodec.from_bytes(bad)
    with pytest.raises(ValueError, match="too few"):
        VectorCodec.train(_clustered(100), parts=8)
    with pytest.raises(ValueError, match="do not divide"):
        VectorCodec.train(_clustered(600), parts=7)


def test_a_compact_photo_fits_in_two_kilobytes() -> None:
    """The 2 KB budget, in all: the vector's codes and the details' record."""
    assert COMPACT_LIBRARY_MODE.count < FEATURE_MODES["compact"].count
    total = CODE_BYTES + record_size(COMPACT_LIBRARY_MODE.count, COMPACT_LIBRARY_MODE.codec)
    assert total <= 2048, total
    # One more keypoint would not fit.
    assert CODE_BYTES + record_size(COMPACT_LIBRARY_MODE.count + 1,
                                    COMPACT_LIBRARY_MODE.codec) > 2048


def test_the_storage_setting_picks_the_details_and_the_index_family(tmp_path: Path) -> None:
    standard = Settings(library_dir=tmp_path)
    compact = standard.with_changes(storage="compact")
    assert feature_mode(standard) == FEATURE_MODES["compact"]
    assert feature_mode(compact) == COMPACT_LIBRARY_MODE
    assert feature_mode(compact.with_changes(local_features="detailed")) == \
        COMPACT_LIBRARY_MODE
    assert feature_mode(compact.with_changes(local_features="off")) is None
    assert choose_family(50_000, 512, 1024, coded=True).family == IVF_PQ
    assert choose_family(50_000, 512, 1024).family == FLAT
    assert choose_family(100, 512, 1024, coded=True).family == FLAT
    compact.save()
    assert json.loads((tmp_path / "settings.json").read_text())["storage"] == "compact"
    assert Settings.load(tmp_path).compact


# The catalog ------------------------------------------------------------------------------


def _photos(lib: Library, n: int, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = _clustered(n, dim, seed)
    ids, _ = lib.add(x)
    return ids, x


def test_coding_the_catalog_is_one_transaction_and_keeps_every_photo(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stored_vectors, "TRAIN_MIN", 300)
    lib = Library(tmp_path)
    rows = StoredVectors(lib.catalog, MODEL)
    ids, x = _photos(lib, 299)
    assert not rows.compress()  # too few to learn from: float16 stays
    more, y = _photos(lib, 400, seed=1)
    ids, x = np.concatenate([ids, more]), np.concatenate([x, y])
    before = lib.catalog.generation()
    assert rows.compress()
    assert lib.catalog.generation() == before + 1
    codec = rows.codec()
    assert codec is not None and codec.parts == 64  # a slice a dimension: 64 of them
    got_ids, codes = lib.catalog.vectors(MODEL, 64)
    np.testing.assert_array_equal(got_ids, ids)
    assert codes.dtype == np.uint8 and codes.shape == (699, 64)
    # Read back as the vectors the codes stand for, everywhere.
    got_ids, decoded = rows.all()
    cos = np.sum(decoded * x, axis=1) / np.linalg.norm(decoded, axis=1)
    assert cos.min() > 0.8
    np.testing.assert_array_equal(rows.of(ids[:3]), decoded[:3])
    np.testing.assert_array_equal(rows.one(int(ids[5])), decoded[5])
    assert not rows.compress()  # once only


def test_a_batch_of_the_wrong_kind_is_refused_whole(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that prepared float vectors before another coded the catalog (or codes
    after it was made standard) must not mix the two: nothing of its batch is written."""
    monkeypatch.setattr(stored_vectors, "TRAIN_MIN", 300)
    lib = Library(tmp_path)
    _photos(lib, 300)
    float_batch = [PhotoUpdate(tmp_path / "photos" / "new.jpg", lib.folder, 1, 1.0,
                               "f" * 32, vector=_clustered(1)[0])]
    code_batch = [PhotoUpdate(tmp_path / "photos" / "new.jpg", lib.folder, 1, 1.0,
                              "f" * 32, vector=np.zeros(64, np.uint8))]
    with pytest.raises(CatalogError, match="float16"):
        lib.catalog.store(MODEL, code_batch)
    assert StoredVectors(lib.catalog, MODEL).compress()
    generation = lib.catalog.generation()
    with pytest.raises(CatalogError, match="product codes"):
        lib.catalog.store(MODEL, float_batch)
    assert lib.catalog.generation() == generation
    assert lib.catalog.photo_by_path(tmp_path / "photos" / "new.jpg") is None
    wrong_size = [PhotoUpdate(tmp_path / "photos" / "new.jpg", lib.folder, 1, 1.0,
                              "f" * 32, vector=np.zeros(32, np.uint8))]
    with pytest.raises(CatalogError):
        lib.catalog.store(MODEL, wrong_size)
    lib.catalog.store(MODEL, code_batch)
    assert len(lib.catalog.vector_ids(MODEL)) == 301


def test_back_to_float16_loses_nothing_and_a_damaged_codec_is_forgotten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stored_vectors, "TRAIN_MIN", 300)
    lib = Library(tmp_path)
    ids, _ = _photos(lib, 300)
    rows = StoredVectors(lib.catalog, MODEL)
    assert rows.compress()
    decoded = rows.all()[1]
    assert rows.expand() == 300
    assert rows.codec() is None and lib.catalog.vector_code_size(MODEL) == 0
    got_ids, back = lib.catalog.vectors(MODEL)  # float16 of what the codes stood for
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_allclose(back, decoded, atol=2e-3)
    assert rows.expand() == 0
    # A damaged codec: its codes mean nothing; they go, and the photos stay.
    assert rows.compress()
    with lib.catalog.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE vector_codecs SET data = substr(data, 1, 100)")
    with pytest.raises(CatalogError, match="--storage standard"):
        StoredVectors(lib.catalog, MODEL).all()
    assert StoredVectors(lib.catalog, MODEL).expand() == 300
    assert len(lib.catalog.vector_ids(MODEL)) == 0 and lib.catalog.counts()


def test_coding_takes_the_write_lock_before_it_reads(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A photo re-embedded by another process while the catalog is being coded is not
    overwritten with codes of its old vector: that writer waits for the coding, then
    finds the library coded and is refused (it codes its batch and tries again)."""
    import threading

    from imagesearch.storage.catalog import Catalog
    from imagesearch.storage.database import open_catalog_engine

    monkeypatch.setattr(stored_vectors, "TRAIN_MIN", 300)
    lib = Library(tmp_path)
    ids, x = _photos(lib, 300)
    rows = StoredVectors(lib.catalog, MODEL)
    codec = rows.learn()
    assert codec is not None
    other = Catalog(open_catalog_engine(tmp_path / "catalog.sqlite3"))
    path = tmp_path / "photos" / "0.jpg"
    outcome: list[BaseException | None] = []

    def re_embed() -> None:
        try:
            other.store(MODEL, [PhotoUpdate(path, lib.folder, 2, 2.0, "e" * 32,
                                            vector=_clustered(1, seed=9)[0])])
            outcome.append(None)
        except BaseException as exc:  # the test looks at what it was
            outcome.append(exc)

    started = threading.Event()
    writer = threading.Thread(target=re_embed)

    def encode(vectors: np.ndarray) -> np.ndarray:
        if not started.is_set():  # inside the coding transaction, its lock held
            started.set()
            writer.start()
            writer.join(0.5)
            assert writer.is_alive()  # waiting for the lock, not writing
        return codec.encode(vectors)

    assert lib.catalog.compress_vectors(MODEL, codec.to_bytes(), codec.parts, encode) == 300
    writer.join(15)
    assert isinstance(outcome[0], CatalogError)
    np.testing.assert_array_equal(lib.catalog.vector(int(ids[0]), MODEL, codec.parts),
                                  codec.encode(x[:1])[0])
    other.close()


def test_a_failed_coding_changes_nothing(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stored_vectors, "TRAIN_MIN", 300)
    lib = Library(tmp_path)
    _, x = _photos(lib, 300)
    generation = lib.catalog.generation()

    def broken(vectors: np.ndarray) -> np.ndarray:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        lib.catalog.compress_vectors(MODEL, b"codec", 64, broken)
    assert lib.catalog.vector_code_size(MODEL) == 0
    assert lib.catalog.generation() == generation
    np.testing.assert_allclose(lib.catalog.vectors(MODEL)[1], x, atol=2e-3)


# The search index ---------------------------------------------------------------------------


def test_a_compact_library_is_searched_through_its_own_codes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stored_vectors, "TRAIN_MIN", 300)
    from imagesearch.core import index_family

    monkeypatch.setattr(index_family, "IVF_MIN", 500)
    lib = Library(tmp_path)
    ids, _ = _photos(lib, 1200)
    assert StoredVectors(lib.catalog, MODEL).compress()
    store = lib.store(background=False)
    index = store.index()
    assert index is not None and index.family == FLAT  # rebuilt exact first, at once
    store._touched = True
    assert store.upgrade_now()
    index = store.index()
    assert index is not None and index.family == IVF_PQ and index.recall >= 0.97
    decoded = store.rows.all()[1]
    # Each photo's own decoded vector finds it first.
    _, found = index.search(decoded[:50], 1)
    assert (found[:, 0] == ids[:50]).mean() >= 0.96
    # New photos after the coding: coded in the catalog, the index holds what it holds.
    codec = store.rows.codec()
    assert codec is not None
    new = _clustered(20, seed=7)
    updates = [PhotoUpdate(tmp_path / "photos" / f"n{i}.jpg", lib.folder, 1, 1.0,
                           f"{i:032x}"[::-1], vector=codec.encode(v)[0])
               for i, v in enumerate(new)]
    new_ids = np.asarray(lib.catalog.store(MODEL, updates), np.int64)
    store.apply(new_ids, codec.decode(codec.encode(new)), np.zeros(0, np.int64),
                lib.catalog.last_commit())
    assert len(store.index() or []) == 1220
    store.close()
    # Read back from its files: the same family, and it matches the catalog (no rebuild).
    reopened, reason = lib.reopened()
    assert reason is None and reopened is not None and reopened.family == IVF_PQ
    assert len(reopened) == 1220


def test_a_one_shot_command_that_codes_the_library_leaves_its_family_on_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`imagesearch index` whose only change was coding the catalog: the file it leaves
    is IVF-PQ over the codes, not the exact index of float vectors rebuilt meanwhile."""
    from imagesearch.core import index_family
    from imagesearch.core.index_file import peek_header

    monkeypatch.setattr(stored_vectors, "TRAIN_MIN", 300)
    monkeypatch.setattr(index_family, "IVF_MIN", 500)
    lib = Library(tmp_path)
    _photos(lib, 1200, dim=128)
    store = lib.store(background=False)
    assert store.index() is not None  # opened before the coding, as a run does
    codec = store.rows.learn()
    assert codec is not None and store.rows.code_with(codec)
    store.refresh()
    store.mark_changed()
    store.close()
    header = peek_header(store.path)
    assert header is not None and header.family == IVF_PQ and header.count == 1200


def test_vacuum_gives_the_coded_space_back(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stored_vectors, "TRAIN_MIN", 300)
    lib = Library(tmp_path)
    _photos(lib, 1500, dim=512)
    file = tmp_path / "catalog.sqlite3"

    def size() -> int:
        with lib.catalog.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return file.stat().st_size

    before = size()
    assert not lib.catalog.vacuum_due()
    assert StoredVectors(lib.catalog, MODEL).compress()
    assert lib.catalog.vacuum_due()
    assert size() >= before  # rows shrink inside their pages: the file does not
    assert lib.catalog.vacuum() is None and not lib.catalog.vacuum_due()
    # 1,500 float16 vectors took 1.5 MB of it; their codes take 192 KB. The log's pages
    # are handed back too, with the catalog still open.
    wal = file.with_name(file.name + "-wal")
    assert file.stat().st_size + (wal.stat().st_size if wal.exists() else 0) \
        < before - 1_000_000


def test_ames_and_typos_do_not_break_the_budget(tmp_path: Path, make_settings: Any,
                                               shared_encoder: Any) -> None:
    from imagesearch.services.context import build_context

    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "settings.json").write_text(json.dumps({"storage": "Compact"}))
    assert Settings.load(tmp_path / "lib").storage == "standard"  # a typo is no choice
    ctx = build_context(make_settings(storage="compact", rerank="ames"),
                        encoder=shared_encoder)
    try:
        assert not ctx.ames.available
        assert "compact library keeps no AMES" in (ctx.ames.unavailable_reason() or "")
    finally:
        ctx.close()


def _noise_photos(root: Path, n: int) -> None:
    for i in range(n):
        noise_jpeg(root / f"p{i:03d}.jpg", i, size=48)


def test_a_one_shot_run_codes_vacuums_and_leaves_ivf_pq_and_a_damaged_codec_recovers(
        make_settings: Any, shared_encoder: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As `imagesearch index` runs: the coding is this run's only change to the index,
    and the file it leaves is IVF-PQ over the codes; the catalog gives the space back.
    Then a damaged codec: status says what to do, and standard storage recovers."""
    from imagesearch.core import index_family
    from imagesearch.core.index_file import peek_header
    from imagesearch.services import index_upgrade
    from imagesearch.services.context import build_context

    monkeypatch.setattr(index_family, "IVF_MIN", 200)
    # Noise photos through a random model do not cluster: lists would be refused as no
    # faster than exact search, which is right, but not what this test looks at.
    monkeypatch.setattr(index_upgrade, "worth_it", lambda nprobe, nlist: True)
    settings = make_settings(storage="compact", decode_workers=2, batch_size=64)
    _noise_photos(tmp_path / "photos", 260)
    monkeypatch.setattr(stored_vectors, "TRAIN_MIN", 10_000)  # first: too few to code
    ctx = build_context(settings, save_delay_s=0.0, background=False, encoder=shared_encoder)
    try:
        ctx.library.add_folder(tmp_path / "photos")
        assert ctx.indexing.run().added == 260
        assert ctx.catalog.vector_code_size(ctx.models.model_id) == 0
        path = ctx.vectors.path
    finally:
        ctx.close()
    header = peek_header(path)
    assert header is not None and header.family == FLAT
    monkeypatch.setattr(stored_vectors, "TRAIN_MIN", 256)  # then a run that only codes
    ctx = build_context(settings, save_delay_s=0.0, background=False, encoder=shared_encoder)
    try:
        report = ctx.indexing.run()
        assert report.added == report.completed == 0
        assert ctx.catalog.vector_code_size(ctx.models.model_id) == 32
        assert not ctx.catalog.vacuum_due()
    finally:
        ctx.close()
    header = peek_header(path)
    assert header is not None and header.family == IVF_PQ and header.count == 260

    ctx = build_context(settings, save_delay_s=0.0, background=False, encoder=shared_encoder)
    try:
        with ctx.catalog.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE vector_codecs SET data = substr(data, 1, 100)")
        storage = ctx.library.status().storage
        assert "damaged" in storage and "--storage standard" in storage
    finally:
        ctx.close()
    ctx = build_context(settings.with_changes(storage="standard"), save_delay_s=0.0,
                        background=False, encoder=shared_encoder)
    try:
        report = ctx.indexing.run()
        assert report.failed == 0 and report.completed == 260  # embedded again
        assert ctx.catalog.vector_code_size(ctx.models.model_id) == 0
        assert len(ctx.catalog.vector_ids(ctx.models.model_id)) == 260
    finally:
        ctx.close()


def test_a_compact_library_keeps_no_other_details_nor_ames_descriptors(
        tmp_path: Path) -> None:
    from imagesearch.services.local_search import LocalIndexService

    lib = Library(tmp_path)
    ids, _ = _photos(lib, 3)
    for extractor in ("ames-dinov2b14reg4-dist-n80-s512-v1",
                      FEATURE_MODES["compact"].extractor_id, COMPACT_LIBRARY_MODE.extractor_id):
        lib.catalog.store_features(extractor, [(int(pid), f"{n:032x}", 1, b"x")
                                               for n, pid in enumerate(ids)])
    standard = Settings(library_dir=tmp_path)
    assert LocalIndexService(standard, lib.catalog).retire_old_extractors() == 3
    assert len(lib.catalog.feature_ids(FEATURE_MODES["compact"].extractor_id)) == 3
    compact = standard.with_changes(storage="compact")
    assert LocalIndexService(compact, lib.catalog).retire_old_extractors() == 6
    assert len(lib.catalog.feature_ids("ames-dinov2b14reg4-dist-n80-s512-v1")) == 0
    assert len(lib.catalog.feature_ids(COMPACT_LIBRARY_MODE.extractor_id)) == 0
    # (the standard pass above had retired the compact library's own)


# End to end -----------------------------------------------------------------------------------


@pytest.fixture
def compact_context(make_settings: Any, shared_encoder: Any, monkeypatch: pytest.MonkeyPatch
                    ) -> Any:
    from imagesearch.services.context import build_context

    monkeypatch.setattr(stored_vectors, "TRAIN_MIN", 256)
    ctx = build_context(make_settings(storage="compact", decode_workers=2, batch_size=64),
                        encoder=shared_encoder)
    yield ctx
    ctx.close()


def test_indexing_a_compact_library_then_making_it_standard(
        compact_context: Any, tmp_path: Path) -> None:
    ctx = compact_context
    root = tmp_path / "photos"
    for i in range(260):
        noise_jpeg(root / f"p{i:03d}.jpg", i, size=48)
    ctx.library.add_folder(root)
    report = ctx.indexing.run()
    assert report.added == 260 and report.failed == 0
    model = ctx.models.model_id
    codec = ctx.catalog.vector_codec(model)
    assert codec is not None and codec[0] == 32  # the tiny model's 32 dimensions
    ids, _ = ctx.catalog.vectors(model, codec[0])
    assert len(ids) == 260
    extractor = ctx.local.extractor
    assert extractor == COMPACT_LIBRARY_MODE.extractor_id
    records, total = ctx.catalog.feature_bytes(extractor)
    assert total / max(records, 1) + codec[0] <= 2048
    # No index of details is kept (its 4 KB a photo would break the budget).
    assert not ctx.local.missing() and not ctx.local.refresh()
    assert not list(ctx.settings.index_dir.glob("local-*"))
    # Text and image search answer from the codes.
    hits = ctx.search.search_vector(ctx.vectors.rows.one(int(ids[3])), 5)
    assert hits[0].photo_id == int(ids[3])
    photo = root / "p010.jpg"
    from imagesearch.domain import Query

    found = ctx.search.search(Query(image=photo, top_k=5), rerank=False)
    assert found and found[0].path == photo
    # A new photo is stored as codes, also when another process coded the library
    # between this batch's coding and its commit (the batch is coded again).
    from imagesearch.errors import VectorKindChanged

    real_store = ctx.catalog.store
    refused: list[int] = []

    def store_once_refused(*args: Any, **kwargs: Any) -> Any:
        if not refused:
            refused.append(1)
            raise VectorKindChanged("coded meanwhile")
        return real_store(*args, **kwargs)

    ctx.catalog.store = store_once_refused
    noise_jpeg(root / "late.jpg", 999, size=48)
    assert ctx.indexing.run().added == 1 and refused
    ctx.catalog.store = real_store
    late = ctx.catalog.photo_by_path(root / "late.jpg")
    assert late is not None
    late_codes = ctx.catalog.vector(late.id, model, codec[0])
    assert late_codes is not None and late_codes.shape == (codec[0],)

    decoded = ctx.vectors.rows.all()[1]
    # Back to standard: the codes become float16 again (nothing lost, nothing to embed).
    from imagesearch.services.context import build_context

    settings = ctx.settings.with_changes(storage="standard")
    ctx.close()
    again = build_context(settings, encoder=ctx.models.encoder())
    try:
        report = again.indexing.run()
        # Only the details are found again (225 keypoints a standard library keeps).
        assert report.completed == 261 and report.failed == 0
        assert again.catalog.vector_codec(model) is None
        ids, vectors = again.catalog.vectors(model)
        assert len(ids) == 261
        np.testing.assert_allclose(vectors, decoded, atol=2e-3)
        assert again.library.status().storage == "standard"
        index = again.vectors.index()
        assert index is not None and len(index) == 261
    finally:
        again.close()


def test_counts_of_no_candidates_in_the_settings_file_are_not_taken(tmp_path: Path) -> None:
    library = tmp_path / "lib"
    library.mkdir()
    (library / "settings.json").write_text(json.dumps(
        {"shortlist": 0, "weight_free_shortlist": -5, "top_k": True}))
    loaded = Settings.load(library)
    defaults = Settings(library_dir=library)
    assert (loaded.shortlist, loaded.weight_free_shortlist, loaded.top_k) == (
        defaults.shortlist, defaults.weight_free_shortlist, defaults.top_k)
    (library / "settings.json").write_text(json.dumps({"weight_free_shortlist": 400}))
    assert Settings.load(library).weight_free_shortlist == 400


def test_the_weight_free_shortlist_is_written_only_when_changed(tmp_path: Path) -> None:
    """No window shows it: a library that never changed it follows a later default."""
    settings = Settings(library_dir=tmp_path)
    settings.save()
    written = json.loads((tmp_path / "settings.json").read_text())
    assert "weight_free_shortlist" not in written and written["shortlist"] == 100
    settings.with_changes(weight_free_shortlist=400).save()
    assert json.loads((tmp_path / "settings.json").read_text())["weight_free_shortlist"] == 400
    assert Settings.load(tmp_path).weight_free_shortlist == 400


def test_a_cold_search_checks_a_compact_index_file_through_the_codes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quick path (services/quick_search.py) compares the file with the catalog's
    codes decoded, as VectorStore does, and hands a stale file to the full path."""
    from imagesearch.core import index_family
    from imagesearch.services.quick_search import current_index
    from imagesearch.storage.catalog_reads import CatalogReader

    monkeypatch.setattr(stored_vectors, "TRAIN_MIN", 300)
    monkeypatch.setattr(index_family, "IVF_MIN", 500)
    lib = Library(tmp_path)
    _photos(lib, 1200)
    assert StoredVectors(lib.catalog, MODEL).compress()
    store = lib.store(background=False)
    assert store.index() is not None
    store._touched = True
    assert store.upgrade_now()
    store.close()
    reader = CatalogReader.open(tmp_path / "catalog.sqlite3")
    assert reader is not None
    try:
        index = current_index(reader, tmp_path / "index", MODEL)
        assert index is not None and index.family == IVF_PQ and len(index) == 1200
        # Another process codes the library again (or makes it standard) while the file
        # is compared: its vectors change kind under the reads, and the full path answers.
        real = reader.vector_codec_digest
        calls = iter(range(10))
        monkeypatch.setattr(reader, "vector_codec_digest",
                            lambda model: real(model) if next(calls) < 1 else "another")
        assert current_index(reader, tmp_path / "index", MODEL) is None
        monkeypatch.setattr(reader, "vector_codec_digest", real)
        # Other codes at the same generation (a file that claims it): the decoded
        # vectors differ from the file's, as the full path would find.
        with sqlite3.connect(tmp_path / "catalog.sqlite3") as conn:
            conn.execute("UPDATE embeddings SET vector = (SELECT vector FROM embeddings "
                         "ORDER BY photo_id DESC LIMIT 1)")
        assert current_index(reader, tmp_path / "index", MODEL) is None
        assert lib.reopened()[1] is not None  # the full path rebuilds it too
        codec = StoredVectors(lib.catalog, MODEL).codec()
        assert codec is not None
        lib.catalog.store(MODEL, [PhotoUpdate(tmp_path / "photos" / "new.jpg", lib.folder,
                                              1, 1.0, "f" * 32,
                                              vector=codec.encode(_clustered(1, seed=9))[0])])
        assert current_index(reader, tmp_path / "index", MODEL) is None  # behind now
    finally:
        reader.close()
        lib.catalog.close()
