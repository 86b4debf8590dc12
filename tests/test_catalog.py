"""The catalog: schema versioning, folders, photos, vectors, generations."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

from imagesearch.domain import PhotoStatus
from imagesearch.errors import CatalogError, CatalogTooNew, FolderError
from imagesearch.storage.catalog import Catalog, PhotoUpdate
from imagesearch.storage.database import HEAD_REVISION, known_revisions, open_catalog_engine


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    cat = Catalog(open_catalog_engine(tmp_path / "catalog.sqlite3"))
    yield cat
    cat.close()


def test_head_revision_constant_matches_migrations() -> None:
    from alembic.script import ScriptDirectory

    from imagesearch.storage import database

    script = ScriptDirectory(str(database._MIGRATIONS_DIR))
    assert script.get_current_head() == HEAD_REVISION
    assert HEAD_REVISION in known_revisions()


def test_wal_mode_and_version(tmp_path: Path, catalog: Catalog) -> None:
    with sqlite3.connect(tmp_path / "catalog.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == \
            HEAD_REVISION


def test_newer_catalog_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    open_catalog_engine(path).dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    with pytest.raises(CatalogTooNew, match="newer version of imagesearch"):
        open_catalog_engine(path)


def test_garbage_file_is_a_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CatalogError):
        open_catalog_engine(path)


FIRST_REVISION = "0001"


def _first_schema_catalog(path: Path) -> None:
    """A catalog as the first schema made it: Alembic's real upgrade to 0001, then rows
    written in that schema's own terms (SQL, not today's ORM classes)."""
    from alembic import command
    from sqlalchemy import text

    from imagesearch.storage import database

    engine = database.create_catalog_engine(path)
    with engine.begin() as conn:
        command.upgrade(database._alembic_config(conn), FIRST_REVISION)
    vector = (np.arange(8, dtype=np.float16) / 10).tobytes()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO folders (id, path, watched, online, added_at) "
                          "VALUES (1, :p, 1, 1, '2024-03-02 10:00:00.000000')"),
                     {"p": os.fsencode(path.parent / "photos")})
        for pid, name, status, error in ((1, "a.jpg", "indexed", None),
                                         (2, "b.jpg", "failed", "not an image")):
            conn.execute(text(
                "INSERT INTO photos (id, folder_id, path, size, mtime, content_hash, status, "
                "error, updated_at) VALUES (:id, 1, :p, 10, 1.5, :h, :s, :e, "
                "'2024-03-02 10:05:00.000000')"),
                {"id": pid, "p": os.fsencode(path.parent / "photos" / name), "h": f"{pid:032x}",
                 "s": status, "e": error})
        conn.execute(text("INSERT INTO embeddings (photo_id, model, vector) VALUES (1, 'm', :v)"),
                     {"v": vector})
        conn.execute(text("INSERT INTO meta (key, value) VALUES ('generation', '3')"))
    engine.dispose()


def test_a_catalog_of_the_first_schema_opens_upgraded_with_its_data(tmp_path: Path) -> None:
    from imagesearch.storage.database import current_revision

    path = tmp_path / "catalog.sqlite3"
    _first_schema_catalog(path)
    engine = open_catalog_engine(path)  # upgrades to the head, backing up first
    assert current_revision(engine) == HEAD_REVISION
    backups = list(tmp_path.glob(f"catalog.backup-{FIRST_REVISION}-*.sqlite3"))
    assert len(backups) == (0 if HEAD_REVISION == FIRST_REVISION else 1)
    for backup in backups:  # the old catalog as it was
        with sqlite3.connect(backup) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == \
                (FIRST_REVISION,)
            assert conn.execute("SELECT count(*) FROM photos").fetchone() == (2,)
    catalog = Catalog(engine)
    try:
        (folder,) = catalog.folders()
        assert folder.path == tmp_path / "photos"
        assert (folder.photo_count, folder.indexed_count, folder.failed_count) == (2, 1, 1)
        assert catalog.generation() == 3
        assert [r.error for r in catalog.failures()] == ["not an image"]
        ids, vecs = catalog.vectors("m")
        assert ids.tolist() == [1]
        np.testing.assert_allclose(vecs[0], np.arange(8) / 10, atol=1e-3)
        (new,) = catalog.store("m", [_update(tmp_path / "photos" / "c.jpg", folder.id,
                                             np.ones(8, np.float32))])
        assert catalog.generation() == 4 and catalog.photos([new])[new].folder_id == folder.id
        # The local-feature table of 0002 is there and usable.
        assert catalog.feature_ids("sift-test").tolist() == []
        # And 0003's codecs of compact libraries (none here: the vectors are float16).
        assert catalog.vector_codec("m") is None and catalog.vector_code_size("m") == 0
    finally:
        catalog.close()


def test_a_real_migration_backs_the_catalog_up_first(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Through Alembic for real, with one more revision than the app ships."""
    import shutil

    from imagesearch.storage import database

    path = tmp_path / "catalog.sqlite3"
    catalog = Catalog(open_catalog_engine(path))
    fid = catalog.add_folder(tmp_path)
    catalog.store("m", [_update(tmp_path / "a.jpg", fid, np.ones(8, np.float32))])
    catalog.close()
    scripts = tmp_path / "migrations"
    shutil.copytree(database._MIGRATIONS_DIR, scripts,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "9999_test.py").write_text(
        '"""A later schema: one more index."""\n'
        "from alembic import op\n\n"
        f'revision = "9999"\ndown_revision = "{HEAD_REVISION}"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        '    op.create_index("ix_photos_mtime", "photos", ["mtime"])\n')
    monkeypatch.setattr(database, "_MIGRATIONS_DIR", scripts)
    monkeypatch.setattr(database, "HEAD_REVISION", "9999")
    engine = open_catalog_engine(path)
    try:
        assert database.current_revision(engine) == "9999"
        with engine.connect() as conn:
            from sqlalchemy import text

            assert conn.execute(text("SELECT name FROM sqlite_master WHERE type='index' "
                                     "AND name='ix_photos_mtime'")).first() is not None
        assert Catalog(engine).counts()[PhotoStatus.INDEXED] == 1
    finally:
        engine.dispose()
    (backup,) = tmp_path.glob(f"catalog.backup-{HEAD_REVISION}-*.sqlite3")
    with sqlite3.connect(backup) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == \
            (HEAD_REVISION,)
        assert conn.execute("SELECT count(*) FROM photos").fetchone() == (1,)


def _update(path: Path, folder_id: int, vec: np.ndarray | None = None,
            error: str | None = None) -> PhotoUpdate:
    return PhotoUpdate(path, folder_id, size=10, mtime=1.0,
                       content_hash=os.fsencode(path.name).hex()[:32], width=4, height=3,
                       format="JPEG", error=error, vector=vec)


def test_store_upserts_by_path_and_bumps_generation(catalog: Catalog, tmp_path: Path) -> None:
    fid = catalog.add_folder(tmp_path)
    g0 = catalog.generation()
    v = np.ones(8, np.float32) / np.sqrt(8)
    ids = catalog.store("m", [_update(tmp_path / "a.jpg", fid, v),
                              _update(tmp_path / "b.jpg", fid, error="broken")])
    assert catalog.generation() == g0 + 1
    again = catalog.store("m", [_update(tmp_path / "a.jpg", fid, v)])
    assert again == ids[:1]  # same path, same photo
    recs = catalog.photos(ids)
    assert recs[ids[0]].status is PhotoStatus.INDEXED
    assert recs[ids[1]].status is PhotoStatus.FAILED and recs[ids[1]].error == "broken"
    got_ids, vecs = catalog.vectors("m")
    assert got_ids.tolist() == [ids[0]]
    np.testing.assert_allclose(vecs[0], v, atol=1e-3)
    assert catalog.vectors("other")[0].size == 0


def test_nested_folders(catalog: Catalog, tmp_path: Path) -> None:
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    child = catalog.add_folder(inner)
    catalog.store("m", [_update(inner / "x.jpg", child)])
    parent = catalog.add_folder(tmp_path / "a")  # absorbs the child and its photos
    assert [f.id for f in catalog.folders()] == [parent]
    assert catalog.folders()[0].photo_count == 1
    with pytest.raises(FolderError, match="already in the library"):
        catalog.add_folder(inner)
    assert catalog.add_folder(tmp_path / "a") == parent


@pytest.mark.skipif(sys.platform != "linux", reason="byte file names are a Linux thing")
def test_non_utf8_paths_round_trip_and_filter(catalog: Catalog, tmp_path: Path) -> None:
    weird = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9/\xff.jpg"))
    fid = catalog.add_folder(tmp_path)
    (pid,) = catalog.store("m", [_update(weird, fid, np.ones(4, np.float32))])
    assert catalog.photos([pid])[pid].path == weird
    assert catalog.ids_under(weird.parent).tolist() == [pid]
    assert catalog.ids_under(tmp_path / "caf").size == 0  # a prefix is not a parent folder


def test_vectors_come_back_in_id_order_across_read_batches(catalog: Catalog,
                                                            tmp_path: Path) -> None:
    fid = catalog.add_folder(tmp_path)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(9000, 4)).astype(np.float32)  # more than one read batch
    ids = catalog.store("m", [_update(tmp_path / f"{i}.jpg", fid, v)
                              for i, v in enumerate(vectors)])
    catalog.store("other", [_update(tmp_path / "0.jpg", fid, np.ones(4, np.float32))])
    got_ids, got = catalog.vectors("m")
    order = np.argsort(ids)
    assert got_ids.tolist() == sorted(ids) and catalog.vector_ids("m").tolist() == sorted(ids)
    np.testing.assert_allclose(got, vectors[order], atol=1e-2)
    with sqlite3.connect(tmp_path / "catalog.sqlite3") as conn:
        # Two damaged rows in one read batch whose lengths make up for each other.
        conn.execute("UPDATE embeddings SET vector = x'00000000' WHERE photo_id = ?",
                     (int(ids[5000]),))
        conn.execute("UPDATE embeddings SET vector = zeroblob(12) WHERE photo_id = ?",
                     (int(ids[5001]),))
    with pytest.raises(ValueError, match="differ in length"):
        catalog.vectors("m")


def test_remove_folder_cascades(catalog: Catalog, tmp_path: Path) -> None:
    fid = catalog.add_folder(tmp_path)
    catalog.store("m", [_update(tmp_path / "a.jpg", fid, np.ones(4, np.float32))])
    assert catalog.remove_folder(fid) == 1
    assert catalog.counts()[PhotoStatus.INDEXED] == 0
    assert catalog.vectors("m")[0].size == 0


def test_reset_failed(catalog: Catalog, tmp_path: Path) -> None:
    fid = catalog.add_folder(tmp_path)
    catalog.store("m", [_update(tmp_path / "bad.jpg", fid, error="nope")])
    assert catalog.reset_failed() == 1
    assert catalog.counts()[PhotoStatus.PENDING] == 1


def test_store_returns_ids_in_order_for_mixed_inserts_and_updates(catalog: Catalog,
                                                                 tmp_path: Path) -> None:
    fid = catalog.add_folder(tmp_path)
    first = catalog.store("m", [_update(tmp_path / f"{n}.jpg", fid) for n in "abcdef"])
    mixed = catalog.store("m", [_update(tmp_path / f"{n}.jpg", fid) for n in "zfxbya"])
    records = catalog.photos(mixed)
    assert [records[i].path.name for i in mixed] == [f"{n}.jpg" for n in "zfxbya"]
    assert mixed[1] == first[5] and mixed[3] == first[1] and mixed[5] == first[0]
