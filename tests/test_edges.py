"""Smaller edges: one-line errors, linked paths, local times, the thumbnail budget, odd
library paths, an SQLite too old."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from imagesearch.cli.main import main
from imagesearch.domain import Query
from imagesearch.errors import CatalogError
from imagesearch.services.thumbnails import ThumbnailCache
from imagesearch.storage.database import open_catalog_engine
from tests.conftest import noise_jpeg
from tests.tiny_model import TINY_MODEL_ID


def one_line_error(err: str, *expected: str) -> None:
    """No traceback: one error line (after argparse's usage lines, for a usage error)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert [line for line in lines if "error:" in line] == lines[-1:]
    for text in expected:
        assert text in lines[-1]


@pytest.mark.parametrize("argv", [["--model", "nonsense", "search", "cat"],
                                  ["--model", "nonsense", "status"],
                                  ["models", "download", "no-slash"]])
def test_an_unknown_model_id_is_a_one_line_error(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--library", str(tmp_path / "lib"), *argv])
    assert exit_.value.code == 2
    one_line_error(capsys.readouterr().err, "model ids look like ARCH/TAG", "nonsense"
                   if "nonsense" in argv else "no-slash")


def test_a_missing_file_to_install_is_a_one_line_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IMAGESEARCH_MODELS", str(tmp_path / "models"))
    missing = tmp_path / "open_clip_model.safetensors"
    assert main(["--library", str(tmp_path / "lib"), "models", "install", str(missing),
                 "--model", TINY_MODEL_ID]) == 1
    one_line_error(capsys.readouterr().err, "no such checkpoint file", str(missing))
    assert not (tmp_path / "models" / "ISTiny-ViT").exists()


def test_remove_follows_linked_paths(context: Any, tmp_path: Path) -> None:
    real = tmp_path / "photos"
    noise_jpeg(real / "a.jpg", 1)
    link = tmp_path / "link-to-photos"
    os.symlink(real, link)
    context.library.add_folder(link)  # stored as the real folder
    context.indexing.run()
    assert context.library.remove_folder(link) == 1
    assert context.library.folders() == []
    context.library.add_folder(real)
    context.indexing.run()
    assert context.library.remove_folder(real) == 1


def test_last_indexed_is_shown_in_local_time(context: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from imagesearch.gui.status import when

    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: local and UTC dates differ
    time.tzset()
    try:
        noise_jpeg(tmp_path / "p" / "a.jpg", 1)
        context.library.add_folder(tmp_path / "p")
        context.indexing.run()
        last = context.library.status().last_indexed
        assert last.tzinfo is not None
        assert abs(last - datetime.now(UTC)) < timedelta(minutes=5)
        local = last.astimezone()
        assert when(last) in (f"today {local:%H:%M}", f"yesterday {local:%H:%M}")
        assert when(last) == when(last, now=datetime.now())
        assert local.hour != last.hour  # 14 hours apart: the old display showed UTC
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_thumbnail_cache_stays_within_its_budget(tmp_path: Path) -> None:
    photos = [noise_jpeg(tmp_path / "p" / f"{i}.jpg", i, 96) for i in range(30)]
    cache = ThumbnailCache(tmp_path / "thumbs", budget_bytes=40_000)
    favourite = cache.get(photos[0], None, 64)
    for photo in photos[1:]:
        cache.get(photo, None, 64)
        time.sleep(0.002)  # distinct mtimes: recency is what eviction goes by
        assert cache.get(photos[0], None, 64) == favourite  # used all along
    total = sum(f.stat().st_size for f in (tmp_path / "thumbs").rglob("*.jpg"))
    assert total <= 40_000
    assert favourite.exists()  # recently used: kept
    assert not cache.cache_path(photos[1], photos[1].stat().st_mtime, 64).exists()
    assert cache.cache_path(photos[-1], photos[-1].stat().st_mtime, 64).exists()


@pytest.fixture
def odd_library(make_settings: Any, shared_encoder: Any, tmp_path: Path) -> Iterator[Any]:
    from imagesearch.services.context import build_context

    settings = make_settings(library_dir=tmp_path / "my #1 photos?really" / "library")
    ctx = build_context(settings, encoder=shared_encoder)
    yield ctx
    ctx.close()


def test_a_library_path_with_question_mark_and_hash_works(odd_library: Any,
                                                          tmp_path: Path) -> None:
    photo = noise_jpeg(tmp_path / "p" / "a.jpg", 1)
    odd_library.library.add_folder(tmp_path / "p")
    assert odd_library.indexing.run().added == 1
    assert odd_library.settings.catalog_path.is_file()
    assert [h.path for h in odd_library.search.search(Query(image=photo, top_k=1))] == [photo]
    assert not list(tmp_path.glob("my #1 photos")), "the path was cut at '?'"


def test_an_sqlite_too_old_is_refused_with_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(CatalogError, match=r"needs SQLite 3\.35\.0 or newer.*3\.31\.1"):
        open_catalog_engine(tmp_path / "catalog.sqlite3")
    assert main(["--library", str(tmp_path / "lib"), "status"]) == 1
    one_line_error(capsys.readouterr().err, "needs SQLite 3.35.0 or newer")
