"""Packing a model on one computer and installing it on another: the round trip and refusals."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from imagesearch.cli.main import main
from imagesearch.core.encoder import ClipEncoder
from imagesearch.core.model_archive import (
    ARCHIVE_MANIFEST,
    install_archive,
    is_model_archive,
    pack_model,
)
from imagesearch.core.weights import WeightStore
from imagesearch.errors import ChecksumMismatch, ModelFileError, ModelUnavailable
from tests.tiny_model import TINY_ARCH, TINY_MODEL_ID


@pytest.fixture
def source_store(tmp_path: Path, tiny_checkpoint: tuple[Path, Path]) -> WeightStore:
    store = WeightStore(tmp_path / "here")
    store.install_file(TINY_MODEL_ID, *tiny_checkpoint)
    return store


@pytest.fixture
def packed(tmp_path: Path, source_store: WeightStore) -> Path:
    dest = tmp_path / "tiny.tar"
    pack_model(source_store, TINY_MODEL_ID, dest)
    return dest


def _cli(models: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setenv("IMAGESEARCH_MODELS", str(models))
    monkeypatch.setenv("IMAGESEARCH_HOME", str(models.parent / "library"))
    return main(list(args))


def _nothing_installed(root: Path) -> None:
    """A refused archive leaves no weights, no partial file and no empty model folder."""
    assert WeightStore(root).installed_ids() == []
    assert not [p for p in root.rglob("*") if p.is_file()]
    assert not (root / TINY_ARCH).exists()


def _refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
             archive: Path, *extra: str) -> str:
    there = tmp_path / "there"
    assert _cli(there, monkeypatch, "models", "install", str(archive), *extra) == 1
    err = capsys.readouterr().err
    assert err.startswith("imagesearch: error:") and err.count("\n") == 1, err
    _nothing_installed(there)
    return err


def _archive(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _read(packed: Path) -> tuple[dict[str, object], dict[str, bytes]]:
    with tarfile.open(packed) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    return json.loads(files.pop(ARCHIVE_MANIFEST)), files


def test_pack_then_install_elsewhere_through_the_cli(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        source_store: WeightStore) -> None:
    archive = tmp_path / "carry" / "tiny.tar"
    archive.parent.mkdir()
    assert _cli(source_store.root, monkeypatch, "models", "pack", TINY_MODEL_ID,
                str(archive)) == 0
    out = capsys.readouterr().out
    assert f"wrote {archive}" in out and "imagesearch models install tiny.tar" in out
    assert is_model_archive(archive)
    manifest, files = _read(archive)
    here = source_store.installed(TINY_MODEL_ID)
    assert here is not None and here.config is not None
    assert manifest["model_id"] == TINY_MODEL_ID
    assert manifest["files"] == {  # type: ignore[comparison-overlap]
        "checkpoint": {"name": here.path.name, "size": here.size, "sha256": here.sha256},
        "config": {"name": f"{TINY_ARCH}.json", "size": here.config.stat().st_size,
                   "sha256": manifest["files"]["config"]["sha256"]}}  # type: ignore[index]
    assert files[here.path.name] == here.path.read_bytes()

    there = tmp_path / "there"
    assert _cli(there, monkeypatch, "models", "install", str(archive)) == 0
    assert f"installed {TINY_MODEL_ID}" in capsys.readouterr().out
    got = WeightStore(there).installed(TINY_MODEL_ID)
    assert got is not None and got.sha256 == here.sha256 and got.config is not None
    assert got.config.read_bytes() == here.config.read_bytes()
    # The other computer loads it and computes what this one does.
    a = ClipEncoder.load(TINY_MODEL_ID, source_store, device="cpu", precision="fp32")
    b = ClipEncoder.load(TINY_MODEL_ID, WeightStore(there), device="cpu", precision="fp32")
    assert (a.encode_texts(["a red tram"]) == b.encode_texts(["a red tram"])).all()


def test_a_truncated_archive_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str],
                                        packed: Path) -> None:
    cut = tmp_path / "cut.tar"
    cut.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    assert "damaged or truncated" in _refused(tmp_path, monkeypatch, capsys, cut)


def test_an_archive_cut_before_the_checkpoint_is_incomplete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        packed: Path) -> None:
    with tarfile.open(packed) as tar:
        checkpoint = next(m for m in tar if m.name.endswith(".safetensors"))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(packed.read_bytes()[: checkpoint.offset])
    err = _refused(tmp_path, monkeypatch, capsys, cut)
    assert "incomplete: open_clip_model.safetensors missing" in err


def test_a_changed_byte_fails_the_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str],
                                           packed: Path) -> None:
    with tarfile.open(packed) as tar:
        checkpoint = next(m for m in tar if m.name.endswith(".safetensors"))
    data = bytearray(packed.read_bytes())
    data[checkpoint.offset_data + checkpoint.size // 2] ^= 0xFF
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    err = _refused(tmp_path, monkeypatch, capsys, bad)
    assert "has sha256" in err and "expected" in err


@pytest.mark.parametrize("name", ["../evil.safetensors", "/tmp/evil.safetensors",
                                  "sub/../../evil.safetensors", "..\\evil.safetensors"])
def test_entries_outside_the_archive_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        packed: Path, name: str) -> None:
    manifest, files = _read(packed)
    evil = _archive(tmp_path / "evil.tar", [
        (tarfile.TarInfo(ARCHIVE_MANIFEST), json.dumps(manifest).encode()),
        (tarfile.TarInfo(name), b"payload"),
        *[(tarfile.TarInfo(n), d) for n, d in files.items()]])
    assert "unsafe path" in _refused(tmp_path, monkeypatch, capsys, evil)
    assert not (tmp_path / "evil.safetensors").exists()


def test_a_manifest_naming_a_path_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        packed: Path) -> None:
    manifest, files = _read(packed)
    manifest["files"]["checkpoint"]["name"] = "../open_clip_model.safetensors"  # type: ignore[index]
    evil = _archive(tmp_path / "evil.tar", [
        (tarfile.TarInfo(ARCHIVE_MANIFEST), json.dumps(manifest).encode()),
        *[(tarfile.TarInfo(n), d) for n, d in files.items()]])
    assert "unsafe file name" in _refused(tmp_path, monkeypatch, capsys, evil)


@pytest.mark.parametrize("model_id", ["evil/..", "..\\..\\Roaming/x", "C:\\x/y",
                                      f"{TINY_ARCH}/../../outside"])
def test_a_manifest_whose_model_id_leads_out_of_the_models_folder_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        packed: Path, model_id: str) -> None:
    manifest, files = _read(packed)
    manifest["model_id"] = model_id
    evil = _archive(tmp_path / "evil.tar", [
        (tarfile.TarInfo(ARCHIVE_MANIFEST), json.dumps(manifest).encode()),
        *[(tarfile.TarInfo(n), d) for n, d in files.items()]])
    assert "ARCH/TAG" in _refused(tmp_path, monkeypatch, capsys, evil)
    assert not [p for p in tmp_path.rglob("manifest.json") if "here" not in p.parts]


def test_links_and_unlisted_entries_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        packed: Path) -> None:
    manifest, files = _read(packed)
    link = tarfile.TarInfo("open_clip_model.safetensors")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with_link = _archive(tmp_path / "link.tar", [
        (tarfile.TarInfo(ARCHIVE_MANIFEST), json.dumps(manifest).encode()), (link, b"")])
    assert "link or special file" in _refused(tmp_path, monkeypatch, capsys, with_link)

    extra = _archive(tmp_path / "extra.tar", [
        (tarfile.TarInfo(ARCHIVE_MANIFEST), json.dumps(manifest).encode()),
        *[(tarfile.TarInfo(n), d) for n, d in files.items()],
        (tarfile.TarInfo("run-me.sh"), b"#!/bin/sh\n")])
    assert "does not list" in _refused(tmp_path, monkeypatch, capsys, extra)


def test_other_files_and_other_models_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        packed: Path) -> None:
    plain = _archive(tmp_path / "plain.tar", [(tarfile.TarInfo("photo.jpg"), b"x" * 10)])
    assert "not an imagesearch model archive" in _refused(tmp_path, monkeypatch, capsys, plain)
    err = _refused(tmp_path, monkeypatch, capsys, packed, "--model", "ViT-B-32/laion2b_s34b_b79k")
    assert f"holds {TINY_MODEL_ID}, not ViT-B-32/laion2b_s34b_b79k" in err
    err = _refused(tmp_path, monkeypatch, capsys, packed, "--sha256", "0" * 64)
    assert "carries its own config and checksums" in err


def test_checkpoints_are_not_taken_for_archives(tmp_path: Path,
                                                tiny_checkpoint: tuple[Path, Path]) -> None:
    import torch

    pt = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, pt)  # a zip file
    assert not is_model_archive(pt)
    assert not is_model_archive(tiny_checkpoint[0])
    assert not is_model_archive(tmp_path / "missing.tar")


def test_packing_refuses_what_is_not_installed_or_no_longer_intact(
        tmp_path: Path, source_store: WeightStore) -> None:
    with pytest.raises(ModelUnavailable, match="not installed here"):
        pack_model(source_store, "ViT-B-32/laion2b_s34b_b79k", tmp_path / "x.tar")
    installed = source_store.installed(TINY_MODEL_ID)
    assert installed is not None
    with open(installed.path, "r+b") as f:  # same size, one byte changed: bit rot
        f.seek(installed.size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    dest = tmp_path / "x.tar"
    with pytest.raises(ChecksumMismatch, match="no longer matches"):
        pack_model(source_store, TINY_MODEL_ID, dest)
    assert not dest.exists() and not list(tmp_path.glob("x.tar*"))


def test_packing_into_the_installed_model_folder_is_refused_and_breaks_nothing(
        source_store: WeightStore) -> None:
    installed = source_store.installed(TINY_MODEL_ID)
    assert installed is not None
    before = installed.path.read_bytes()
    for dest in (installed.path, installed.path.parent / "manifest.json",
                 installed.path.parent / "copy.tar"):
        with pytest.raises(ModelFileError, match="inside the installed model's folder"):
            pack_model(source_store, TINY_MODEL_ID, dest)
    assert installed.path.read_bytes() == before
    again = source_store.installed(TINY_MODEL_ID)
    assert again is not None and again.sha256 == installed.sha256
    assert not list(installed.path.parent.glob("*.partial"))


def test_a_models_folder_that_cannot_be_written_is_a_clear_error(
        tmp_path: Path, packed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagesearch.core import weights

    def no_space(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    target = WeightStore(tmp_path / "elsewhere")
    monkeypatch.setattr(weights.Staging, "receive", no_space)
    with pytest.raises(ModelFileError, match="No space left on device"):
        install_archive(target, packed)
    assert target.installed(TINY_MODEL_ID) is None
