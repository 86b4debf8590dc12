"""Model weights: install from file, download with progress and checksum, clear offline errors."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from imagesearch.core import weights as weights_mod
from imagesearch.core.encoder import ClipEncoder
from imagesearch.core.model_registry import KnownModel, parse_model_id
from imagesearch.core.weights import WeightStore
from imagesearch.errors import ChecksumMismatch, ModelLoadError, ModelUnavailable
from tests.tiny_model import TINY_ARCH, TINY_MODEL_ID


class _Hub(http.server.BaseHTTPRequestHandler):
    """Just enough of Hugging Face: LFS files announce sha256, then redirect to a CDN."""

    files: ClassVar[dict[str, bytes]] = {}
    announced: ClassVar[dict[str, str]] = {}

    def log_message(self, *args: object) -> None:
        return None

    def _resolve(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        if "/resolve/main/" in self.path:
            if name not in self.files:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(302)
            self.send_header("Location", f"/cdn/{name}")
            self.send_header("X-Linked-Etag", f'"{self.announced[name]}"')
            self.end_headers()
            return
        body = self.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    do_HEAD = _resolve
    do_GET = _resolve


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Hub]]:
    handler = type("Hub", (_Hub,), {"files": {}, "announced": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    tiny = KnownModel(TINY_ARCH, "random", "test/tiny", 0.0, 0.0, "test model")
    monkeypatch.setattr(weights_mod, "known_model",
                        lambda mid: tiny if mid == TINY_MODEL_ID else None)
    yield handler
    server.shutdown()
    server.server_close()


def _serve(hub: type[_Hub], name: str, data: bytes, announce: bytes | None = None) -> None:
    hub.files[name] = data
    hub.announced[name] = hashlib.sha256(announce if announce is not None else data).hexdigest()


def test_parse_model_id() -> None:
    assert parse_model_id("ViT-B-32/laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    for model in ("MobileCLIP2-S0/dfndr2b", "ames/dinov2-vitb14-reg4", "ViT-L-14/openai+x.1"):
        assert "/".join(parse_model_id(model)) == model
    # Each part is a folder name under the models folder: nothing may lead out of it
    # (an id can come from a model archive's manifest).
    for bad in ("ViT-B-32", "/tag", "a/b/c", "../x", "evil/..", "x/.", "..\\x/y",
                "C:\\x/y", "a/b\\..", "a/ b", "a/b\x00", ".hidden/x"):
        with pytest.raises(ValueError, match="ARCH/TAG"):
            parse_model_id(bad)


def test_install_from_file(tmp_path: Path, tiny_checkpoint: tuple[Path, Path]) -> None:
    checkpoint, config = tiny_checkpoint
    store = WeightStore(tmp_path / "models")
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    got = store.install_file(TINY_MODEL_ID, checkpoint, config, expected_sha256=sha)
    assert got.sha256 == sha and got.path.read_bytes() == checkpoint.read_bytes()
    assert store.installed_ids() == [TINY_MODEL_ID]
    with pytest.raises(ChecksumMismatch):
        store.install_file("X-Arch/other", checkpoint, expected_sha256="0" * 64)
    assert store.installed("X-Arch/other") is None


def test_incomplete_file_is_not_installed(tmp_path: Path,
                                          tiny_checkpoint: tuple[Path, Path]) -> None:
    store = WeightStore(tmp_path / "models")
    got = store.install_file(TINY_MODEL_ID, *tiny_checkpoint)
    with open(got.path, "r+b") as f:
        f.truncate(100)
    assert store.installed(TINY_MODEL_ID) is None


def test_download_verifies_and_loads(tmp_path: Path, hub: type[_Hub],
                                     tiny_checkpoint: tuple[Path, Path]) -> None:
    checkpoint, config = tiny_checkpoint
    _serve(hub, "open_clip_model.safetensors", checkpoint.read_bytes())
    store = WeightStore(tmp_path / "models")
    store.configs_dir.mkdir(parents=True)
    shutil.copy(config, store.configs_dir / f"{TINY_ARCH}.json")
    seen: list[tuple[int, int]] = []
    encoder = ClipEncoder.load(TINY_MODEL_ID, store, device="cpu", precision="fp32",
                               progress=lambda done, total: seen.append((done, total)))
    size = checkpoint.stat().st_size
    assert seen and seen[-1] == (size, size)
    assert store.installed(TINY_MODEL_ID).sha256 == hashlib.sha256(
        checkpoint.read_bytes()).hexdigest()
    assert encoder.encode_texts(["a photo"]).shape == (1, 32)


def test_download_falls_back_to_bin(tmp_path: Path, hub: type[_Hub]) -> None:
    _serve(hub, "open_clip_pytorch_model.bin", b"x" * 5000)
    got = WeightStore(tmp_path).download(TINY_MODEL_ID)
    assert got.path.name == "open_clip_pytorch_model.bin"


def test_corrupt_download_is_rejected(tmp_path: Path, hub: type[_Hub]) -> None:
    _serve(hub, "open_clip_model.safetensors", b"x" * 5000, announce=b"something else")
    store = WeightStore(tmp_path)
    with pytest.raises(ChecksumMismatch, match="damaged"):
        store.download(TINY_MODEL_ID)
    assert store.installed(TINY_MODEL_ID) is None
    assert not list(tmp_path.rglob("*.partial"))


def test_missing_on_hub(tmp_path: Path, hub: type[_Hub]) -> None:
    with pytest.raises(ModelUnavailable, match="models install FILE"):
        WeightStore(tmp_path).download(TINY_MODEL_ID)


def test_offline_fails_fast_with_instructions(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable) as err:
        ClipEncoder.load("ViT-B-32/laion2b_s34b_b79k", WeightStore(tmp_path))
    assert time.perf_counter() - start < 2
    assert "imagesearch models install FILE --model ViT-B-32/laion2b_s34b_b79k" in str(err.value)


def test_unreachable_hub_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="cannot reach"):
        WeightStore(tmp_path).download("ViT-B-32/laion2b_s34b_b79k")
    assert time.perf_counter() - start < 5


def test_unknown_model_cannot_be_downloaded(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelUnavailable, match="not a published open_clip checkpoint"):
        WeightStore(tmp_path).download("ViT-B-32/no_such_tag")


def test_wrong_weights_are_a_load_error(tmp_path: Path,
                                        tiny_checkpoint: tuple[Path, Path]) -> None:
    store = WeightStore(tmp_path)
    store.install_file("ViT-B-32/laion2b_s34b_b79k", tiny_checkpoint[0])
    with pytest.raises(ModelLoadError, match="cannot load ViT-B-32/laion2b_s34b_b79k"):
        ClipEncoder.load("ViT-B-32/laion2b_s34b_b79k", store, device="cpu", precision="fp32")
