"""`imagesearch eval` on a tiny generated benchmark, and its answers to bad benchmarks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.make_instance_bench import build
from imagesearch.cli.main import main
from tests.tiny_model import TINY_MODEL_ID


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three objects, each pasted into two cluttered scenes, plus four decoy scenes."""
    out = tmp_path_factory.mktemp("bench")
    counts = build(out, seed=1, per_object=2, distractors=4, shared=None,
                   skimage_objects=("astronaut", "coffee", "rocket"))
    assert counts == {"db": 10, "queries": 3, "positives": 6}
    return out


def run_eval(bench: Path, tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    from imagesearch.services import local_search

    monkeypatch.setattr(local_search, "MIN_PHOTOS", 4)  # a vocabulary even for 10 photos
    monkeypatch.setenv("IMAGESEARCH_MODELS", str(models_dir))
    code = main(["--library", str(tmp_path / "lib"), "--model", TINY_MODEL_ID, "eval",
                 str(bench), "--out", str(tmp_path / "out"), "--no-progress", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_stage_is_measured_and_written(tiny_bench: Path, tmp_path: Path,
                                             models_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_eval(tiny_bench, tmp_path, models_dir, monkeypatch, capsys, "--json",
                              "--stages", "global,annoy,bovw,bovw-sp,local,sp,sp-all,ames")
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    stages = report["stages"]
    assert report["photos"] == 10 and report["queries"] == 3 and report["failed_photos"] == 0
    assert "not installed" in stages["ames"]["skipped"]
    for name in ("global", "annoy", "bovw", "bovw-sp", "local", "sp", "sp-all"):
        assert "map" in stages[name], name
        assert (tmp_path / "out" / f"results.{name}.json").is_file()
    # The random tiny model finds nothing in particular; matching details finds most
    # objects (two of the six scenes are hard for the compact mode: small, blurred, cut).
    assert stages["sp"]["map"]["100"] >= 70.0
    assert stages["sp"]["box_iou50"] >= 60.0
    assert stages["sp"]["map"]["100"] > stages["global"]["map"]["100"]
    assert stages["sp-all"]["map"]["100"] >= stages["sp"]["map"]["100"]
    assert stages["global"]["box_iou50"] == 0.0  # it draws no boxes
    assert stages["sp"]["bytes_per_photo"] > stages["global"]["bytes_per_photo"] > 0
    assert stages["local"]["index_bytes_per_photo"] > 0
    assert stages["local"]["bytes_per_photo"] <= 2048  # the compact mode's promise
    assert "text" in stages["global"] and "text" in stages["annoy"]
    results = json.loads((tmp_path / "out" / "results.sp.json").read_text())
    assert set(results) == {"astronaut.jpg", "coffee.jpg", "rocket.jpg"}
    top = results["astronaut.jpg"][0]
    assert top["path"].startswith("scenes/astronaut-") and len(top["box"]) == 4
    assert all(a["score"] >= b["score"] for a, b in zip(results["astronaut.jpg"],
                                                        results["astronaut.jpg"][1:], strict=False))


def test_the_table(tiny_bench: Path, tmp_path: Path, models_dir: Path,
                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_eval(tiny_bench, tmp_path, models_dir, monkeypatch, capsys,
                            "--stages", "global,sp", "-k", "5")
    assert code == 0
    lines = out.splitlines()
    assert lines[1].split()[:4] == ["stage", "mAP@100", "R@1", "R@10"]
    assert "P@5" in lines[1] and "box IoU>=.5" in lines[1]
    assert [line.split()[0] for line in lines[3:]] == ["global", "global", "sp"]


@pytest.mark.parametrize(("damage", "message"), [
    (lambda gt: "{not json", "is not valid JSON (line 1"),
    (lambda gt: json.dumps({k: v for k, v in gt.items() if k != "gnd"}), "has no 'gnd'"),
    (lambda gt: json.dumps({**gt, "gnd": gt["gnd"][:1]}), "one entry per query (3)"),
    (lambda gt: json.dumps({**gt, "gnd": [{"ok": [99]}] * 3}),
     "gnd[0].ok names db index 99, but imlist has 10 entries"),
    (lambda gt: json.dumps({**gt, "imlist": [*gt["imlist"][:-1], "scenes/gone.jpg"]}),
     "scenes/gone.jpg is named in gt.json but missing"),
    (lambda gt: json.dumps({**gt, "gnd": [{"ok": [0], "boxes": {"0": [1, 2]}}] * 3}),
     "gnd[0].boxes[0] must be [x0, y0, x1, y1]"),
])
def test_a_bad_benchmark_is_one_line_naming_the_problem(
        tiny_bench: Path, tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], damage: Any, message: str) -> None:
    import shutil

    bench = tmp_path / "bench"
    shutil.copytree(tiny_bench, bench, ignore=shutil.ignore_patterns("results"))
    gt = json.loads((bench / "gt.json").read_text())
    (bench / "gt.json").write_text(damage(gt))
    code, out, err = run_eval(bench, tmp_path, models_dir, monkeypatch, capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("imagesearch: error: ") and message in err


def test_no_such_benchmark(tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_eval(tmp_path / "nowhere", tmp_path, models_dir, monkeypatch, capsys)
    assert code == 1 and "is not a folder" in err
