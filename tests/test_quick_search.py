"""A cold command's description search: answered from a plain read of the catalog, with
the hits the full library path gives, and handed to that path whenever it cannot."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path, PureWindowsPath

import numpy as np
import pytest
from sqlalchemy import select

import imagesearch.cli.main as cli_main
from imagesearch.cli.main import main
from imagesearch.domain import PhotoRecord, PhotoStatus
from imagesearch.errors import QueryError
from imagesearch.services import quick_search
from imagesearch.storage.catalog import Catalog, PhotoUpdate
from imagesearch.storage.catalog_reads import CatalogReader, _uri
from imagesearch.storage.database import open_catalog_engine
from imagesearch.storage.schema import PhotoRow
from tests.test_cli import cli_env  # noqa: F401  (a fixture)

QUERIES = [
    ["a", "cup", "of", "coffee"],
    ["coffee -cup", "-k", "3"],
    ["a", "rocket", "--shortlist", "2", "-k", "4"],
    ["an", "astronaut", "-k", "2", "--json"],
]


@pytest.fixture
def indexed(cli_env: Path, photo_dir: Path,  # noqa: F811
            capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["index", str(photo_dir), "--no-progress"]) == 0
    capsys.readouterr()
    return cli_env


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """What each quick answer returned (None: it handed over to the full path), or the
    exception it raised."""
    seen: list[object] = []
    real = quick_search.answer_description

    def spy(*args: object, **kwargs: object) -> object:
        try:
            seen.append(real(*args, **kwargs))  # type: ignore[arg-type]
        except Exception as exc:
            seen.append(exc)
            raise
        return seen[-1]

    monkeypatch.setattr(quick_search, "answer_description", spy)
    return seen


def _full_path(argv: list[str], monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str]) -> str:
    with monkeypatch.context() as m:
        m.setattr(cli_main, "_answered_at_once", lambda *_: False)
        assert main(argv) == 0
    return capsys.readouterr().out


def test_descriptions_get_the_full_paths_hits(indexed: Path, photo_dir: Path,
                                              answers: list[object],
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for query in [*QUERIES, ["a", "cup", "--folder", str(photo_dir / "trip")]]:
        argv = ["search", *query]
        assert main(argv) == 0
        quick = capsys.readouterr().out
        assert answers[-1] is not None, query  # answered without the full path
        assert quick.strip() and quick == _full_path(argv, monkeypatch, capsys), query
    trip = [Path(h["path"]) for h in json.loads(
        _full_path(["search", "cup", "--folder", str(photo_dir / "trip"), "--json"],
                   monkeypatch, capsys))]
    assert trip and all(p.parent == photo_dir / "trip" for p in trip)


def test_only_minus_terms_is_the_same_clear_error(indexed: Path, answers: list[object],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "-k", "3", "--", "-cup"]) == 1
    assert "not only '-' terms" in capsys.readouterr().err
    assert len(answers) == 1 and isinstance(answers[0], QueryError)  # said by the quick path


def test_a_catalog_that_cannot_be_read_is_left_to_the_full_path(
        indexed: Path, answers: list[object], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    expected = _full_path(["search", "coffee"], monkeypatch, capsys)

    def locked(_conn: object) -> int:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(CatalogReader, "generation", lambda self: self._read(locked))
    assert main(["search", "coffee"]) == 0
    assert answers == [None] and capsys.readouterr().out == expected


def test_a_stale_or_missing_index_file_is_left_to_the_full_path(
        indexed: Path, photo_dir: Path, answers: list[object],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    expected = _full_path(["search", "coffee"], monkeypatch, capsys)
    catalog = indexed / "catalog.sqlite3"
    with sqlite3.connect(catalog) as conn:  # another process committed meanwhile
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 "
                     "WHERE key = 'generation'")
    assert main(["search", "coffee"]) == 0
    assert answers[-1] is None and capsys.readouterr().out == expected
    # The full path rebuilt and saved the file: the next search is quick again.
    assert main(["search", "coffee"]) == 0
    assert answers[-1] is not None and capsys.readouterr().out == expected

    for faiss_file in (indexed / "index").glob("*.faiss*"):
        faiss_file.unlink()
    assert main(["search", "coffee"]) == 0
    assert answers[-1] is None and capsys.readouterr().out == expected


def test_a_damaged_codec_is_left_to_the_full_path(indexed: Path, answers: list[object],
                                                  capsys: pytest.CaptureFixture[str]
                                                  ) -> None:
    with sqlite3.connect(indexed / "catalog.sqlite3") as conn:
        conn.execute("INSERT INTO vector_codecs (model, code_size, digest, data) "
                     "VALUES (?, 128, 'x', x'00')", (json.loads(
                         (indexed / "settings.json").read_text())["model_id"],))
    main(["search", "coffee"])  # the full path may refuse these fake codes; not this test's
    capsys.readouterr()
    assert answers and answers[-1] is None


def test_the_reader_opens_only_a_current_catalog(tmp_path: Path) -> None:
    assert CatalogReader.open(tmp_path / "none.sqlite3") is None
    assert not (tmp_path / "none.sqlite3").exists()  # never created
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database at all" * 100)
    assert CatalogReader.open(garbage) is None
    odd = tmp_path / "a?b#c %41" / "catalog.sqlite3"  # any character works in a library path
    folders = [odd.parent]
    if sys.platform == "linux":  # and any bytes, there
        folders.append(Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9")))
    for folder in folders:
        Catalog(open_catalog_engine(folder / "catalog.sqlite3")).close()
        reader = CatalogReader.open(folder / "catalog.sqlite3")
        assert reader is not None and reader.generation() == 0
        reader.close()
    with sqlite3.connect(odd) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0002'")
    assert CatalogReader.open(odd) is None  # the full open migrates it


def test_windows_paths_become_uris_sqlite_accepts() -> None:
    share = PureWindowsPath(r"\\server\share\photos #1\catalog.sqlite3")
    assert _uri(share) == "file:////server/share/photos%20%231/catalog.sqlite3?mode=rw"
    local = PureWindowsPath(r"C:\Users\a?b\catalog.sqlite3")
    assert _uri(local) == "file:///C:/Users/a%3Fb/catalog.sqlite3?mode=rw"


def test_plain_reads_match_what_the_orm_maps(tmp_path: Path) -> None:
    catalog = Catalog(open_catalog_engine(tmp_path / "catalog.sqlite3"))
    try:
        fid = catalog.add_folder(tmp_path)
        weird = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9 ?#/\xff.jpg")) \
            if sys.platform == "linux" else tmp_path / "café ?#" / "x.jpg"
        ids = catalog.store("m", [
            PhotoUpdate(weird, fid, size=10, mtime=1.5, content_hash="ab" * 16, width=4,
                        height=3, format="JPEG", captured_at=datetime(2024, 5, 1, 12, 0, 7),
                        vector=np.ones(4, np.float32) / 2),
            PhotoUpdate(tmp_path / "b.png", fid, size=20, mtime=2.0, content_hash=None,
                        error="not an image"),
            PhotoUpdate(tmp_path / "c.jpg", fid, size=30, mtime=3.25, content_hash="cd" * 16,
                        width=8, height=6, format="JPEG",
                        captured_at=datetime(2023, 1, 2, 3, 4, 5, 678901),
                        vector=np.full(4, 0.5, np.float32))])
        with catalog._sessions() as s:
            mapped = {row.id: PhotoRecord(
                id=row.id, path=row.path, folder_id=row.folder_id, size=row.size,
                mtime=row.mtime, content_hash=row.content_hash, width=row.width,
                height=row.height, format=row.format, captured_at=row.captured_at,
                status=PhotoStatus(row.status), error=row.error)
                for row in s.scalars(select(PhotoRow))}
        reader = CatalogReader.open(tmp_path / "catalog.sqlite3")
        assert reader is not None
        try:
            assert reader.photos([*ids, 999]) == mapped == catalog.photos(ids)
            assert catalog.failures() == [mapped[ids[1]]]  # the same SQL, by path
            assert reader.ids_under(weird.parent).tolist() == [ids[0]]
            assert reader.generation() == catalog.generation() > 0
            with_vectors = [ids[0], ids[2]]
            assert reader.vector_ids("m").tolist() == with_vectors
            assert np.array_equal(reader.vectors_of("m", np.array(with_vectors[::-1])),
                                  catalog.vectors_of("m", np.array(with_vectors[::-1])))
            with pytest.raises(KeyError):
                reader.vectors_of("m", np.array([ids[1]]))
            assert reader.vector_codec_digest("m") is None
        finally:
            reader.close()
    finally:
        catalog.close()


def test_the_command_answers_without_sqlalchemy_and_leaves_at_once(indexed: Path) -> None:
    """The console command, in a process of its own: SQLAlchemy never imported, the hits
    printed in full through a pipe, and the process ended by ``leave_now``."""
    script = (
        "import atexit, sys\n"
        "import imagesearch.cli.main as m\n"
        "atexit.register(lambda: print('torn down', file=sys.stderr))\n"
        "real = m.leave_now\n"
        "def leave(code, gone_code):\n"
        "    print('sqlalchemy' in sys.modules, file=sys.stderr)\n"
        "    real(code, gone_code)\n"
        "m.leave_now = leave\n"
        "m.entry()\n")
    done = subprocess.run([sys.executable, "-c", script, "search", "a", "cup", "--json"],
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False"  # no teardown, no SQLAlchemy
    assert len(json.loads(done.stdout)) == 6


def test_the_command_exits_with_the_errors_code(indexed: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "from imagesearch.cli.main import entry; "
                           "entry()", "search", "--", "-cup"], capture_output=True,
                          text=True, timeout=120, env=os.environ.copy())
    assert done.returncode == 1 and "not only '-' terms" in done.stderr

