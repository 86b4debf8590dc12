"""The command line end to end, in-process, with the tiny model installed by the CLI itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imagesearch.cli.main import main
from tests.tiny_model import TINY_MODEL_ID


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            tiny_checkpoint: tuple[Path, Path]) -> Path:
    library = tmp_path / "lib"
    monkeypatch.setenv("IMAGESEARCH_HOME", str(library))
    monkeypatch.setenv("IMAGESEARCH_MODELS", str(tmp_path / "models"))
    checkpoint, config = tiny_checkpoint
    assert main(["--model", TINY_MODEL_ID, "models", "install", str(checkpoint),
                 "--model", TINY_MODEL_ID, "--config", str(config)]) == 0
    library.mkdir(exist_ok=True)
    (library / "settings.json").write_text(json.dumps(
        {"model_id": TINY_MODEL_ID, "precision": "fp32", "decode_workers": 1}))
    return library


def test_index_search_json_status(cli_env: Path, photo_dir: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", str(photo_dir), "--no-progress"]) == 0
    assert "6 added" in capsys.readouterr().out

    target = photo_dir / "trip" / "coffee.jpg"
    assert main(["search", "--image", str(target), "--json", "-k", "3"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and hits[0]["path"] == str(target)
    assert set(hits[0]) >= {"path", "score"} and hits[0]["score"] > hits[1]["score"]

    assert main(["search", "a", "cup", "of", "coffee", "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2

    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert main(["index", "--no-progress"]) == 0
    assert "1 failed" in capsys.readouterr().out
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "6 indexed" in out and "broken.jpg" in out and "not an image" in out
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["indexed"] == 6 and status["failures"][0]["path"].endswith("broken.jpg")

    assert main(["retry"]) == 0
    assert "1 failed" in capsys.readouterr().out


def test_index_storage_choice_is_kept_and_shown(cli_env: Path, photo_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--device", "cpu", "index", str(photo_dir), "--storage", "compact",
                 "--no-progress"]) == 0
    saved = json.loads((cli_env / "settings.json").read_text())
    # The choice is kept for the library; this command's --device is not.
    assert saved["storage"] == "compact" and saved["device"] == "auto"
    capsys.readouterr()
    assert main(["status"]) == 0
    assert "storage:  compact (vectors kept as in a standard library until it holds 5,000" \
        in capsys.readouterr().out
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["storage"].startswith("compact")
    assert main(["search", "--image", str(photo_dir / "trip" / "coffee.jpg"), "-k", "1"]) == 0
    assert main(["index", "--storage", "standard", "--no-progress"]) == 0
    assert json.loads((cli_env / "settings.json").read_text())["storage"] == "standard"


def test_models_list(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert f"* {TINY_MODEL_ID}" in out and "ViT-B-32-256/datacomp_s34b_b86k" in out


def test_errors_are_one_line_and_nonzero(cli_env: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("imagesearch: error:") and "does not exist" in err
    assert main(["search"]) == 1
    assert "Give a description" in capsys.readouterr().err
    assert main(["--model", "ViT-B-32/laion2b_s34b_b79k", "search", "cat"]) == 1
    assert "models install FILE" in capsys.readouterr().err


def test_console_script_help_is_fast_and_light() -> None:
    code = ("import sys, imagesearch.cli.main as m\n"
            "try:\n    m.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(k for k in ('torch', 'open_clip', 'faiss', 'PySide6')"
            " if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().endswith("[]")


def test_a_one_shot_command_builds_the_local_index_in_the_foreground(
        cli_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # A command's process ends as soon as it returns: a vocabulary left training on a
    # background thread was lost, and its thread cut off inside FAISS (exit code 139).
    import threading

    from imagesearch.services import local_search, searching
    from tests.conftest import skimage_photo
    from tests.instance_scenes import coffee_scenes, save

    monkeypatch.setattr(local_search, "MIN_PHOTOS", 2)
    monkeypatch.setattr(searching, "MIN_PHOTOS", 2)
    root = tmp_path / "photos"
    coffee_scenes(root, 12)
    query = save(skimage_photo("coffee"), tmp_path / "q.jpg")

    def background_refreshes() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "imagesearch-local-index"]

    assert main(["index", str(root)]) == 0
    built = list((cli_env / "index").glob("local-*.asmk"))
    assert len(built) == 1 and not background_refreshes()

    built[0].unlink()  # lost, or a library indexed by an older version
    assert main(["search", "--image", str(query), "-k", "3"]) == 0
    err = capsys.readouterr().err
    # Built first, in the foreground, rather than a search that finds nothing.
    assert "photo details once" in err and "not built yet" not in err
    assert built[0].exists() and not background_refreshes()
    assert main(["search", "--image", str(query), "-k", "3"]) == 0
    assert "photo details once" not in capsys.readouterr().err


def test_the_cli_entry_point_calls_freeze_support_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """In the frozen app the decode pool spawns this executable: the child must not parse."""
    import multiprocessing

    calls: list[str] = []
    monkeypatch.setattr(multiprocessing, "freeze_support", lambda: calls.append("freeze"))
    with pytest.raises(SystemExit):
        main(["--frozen-child-arguments-argparse-would-refuse"])
    assert calls == ["freeze"]
