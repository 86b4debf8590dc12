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


def test_catalog_of_the_first_schema_is_backed_up_then_really_upgraded(tmp_path: Path) -> None:
    """A real Alembic upgrade: a catalog written at revision 0001, with rows, opened now."""
    import sqlite3

    from alembic import command

    from imagesearch.storage.database import _alembic_config, create_catalog_engine

    path = tmp_path / "catalog.sqlite3"
    engine = create_catalog_engine(path)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0001")
    engine.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO folders (id, path, watched, online, added_at) "
                     "VALUES (1, ?, 1, 1, '2026-01-01 00:00:00')", (b"/photos",))
        conn.execute("INSERT INTO photos (id, folder_id, path, size, mtime, content_hash, "
                     "status) VALUES (7, 1, ?, 10, 1.0, 'abc', 'indexed')",
                     (b"/photos/a.jpg",))
        conn.execute("INSERT INTO embeddings VALUES (7, 'm', ?)", (b"\0\0" * 4,))
    open_catalog_engine(path).dispose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == \
            HEAD_REVISION
        assert conn.execute("SELECT id, path FROM photos").fetchall() == [(7, b"/photos/a.jpg")]
        assert conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM local_features").fetchone()[0] == 0
    backups = list(tmp_path.glob("catalog.backup-0001-*.sqlite3"))
    assert len(backups) == 1
    with sqlite3.connect(backups[0]) as conn:  # the backup is the untouched old schema
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0001"


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
