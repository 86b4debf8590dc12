"""Shared fixtures: a tiny random-weight open_clip model on disk, settings, photo folders."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# Before anything imports Qt, and never reach the network.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("IMAGESEARCH_HOME", None)

import numpy as np
import pytest

from imagesearch.config import Settings
from tests.tiny_model import TINY_MODEL_ID, write_tiny_checkpoint

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat",
                  "immunohistochemistry", "hubble_deep_field", "coins", "page")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, architecture JSON) of a tiny random open_clip model, written once."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory,
               tiny_checkpoint: tuple[Path, Path]) -> Path:
    """A models folder with the tiny model installed through the real install path."""
    from imagesearch.core.weights import WeightStore

    root = tmp_path_factory.mktemp("models")
    checkpoint, config = tiny_checkpoint
    WeightStore(root).install_file(TINY_MODEL_ID, checkpoint, config)
    return root


@pytest.fixture
def make_settings(tmp_path: Path, models_dir: Path) -> Callable[..., Settings]:
    def make(**changes: object) -> Settings:
        base = Settings(library_dir=tmp_path / "library", models_dir=models_dir,
                        model_id=TINY_MODEL_ID, decode_workers=1, batch_size=8)
        return base.with_changes(**changes)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def shared_encoder(models_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny model loaded once for the whole session (fp32 so results are exact)."""
    from imagesearch.core.encoder import ClipEncoder
    from imagesearch.core.weights import WeightStore

    return ClipEncoder.load(TINY_MODEL_ID, WeightStore(models_dir), device="cpu",
                            precision="fp32", allow_download=False)


@pytest.fixture
def context(settings: Settings, shared_encoder):  # type: ignore[no-untyped-def]
    """A full AppContext over a fresh library, sharing the loaded tiny model."""
    from imagesearch.services.context import build_context

    ctx = build_context(settings, encoder=shared_encoder)
    yield ctx
    ctx.close()


def skimage_photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """A folder of real photos (from skimage.data) saved as JPEG and PNG, one subfolder deep."""
    from PIL import Image

    root = tmp_path / "photos"
    (root / "trip").mkdir(parents=True)
    for i, name in enumerate(SKIMAGE_PHOTOS[:6]):
        folder = root / "trip" if i % 2 else root
        ext = ".png" if i == 4 else ".jpg"
        Image.fromarray(skimage_photo(name)).save(folder / f"{name}{ext}")
    return root


def noise_jpeg(path: Path, seed: int, size: int = 64) -> Path:
    """A small JPEG of random pixels: distinct per seed, quick to write and to index."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def write_photo() -> Iterator[Callable[..., Path]]:
    from PIL import Image

    def write(path: Path, name: str = "coffee", **save: object) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(skimage_photo(name)).save(path, **save)
        return path

    yield write


def damaged(blob: bytes, how: str) -> bytes:
    """A stored record spoiled the ways a disk or a crash spoils one: cut short
    ("truncate"), a byte flipped in the payload ("flip"), its first two bytes (the
    magic) overwritten ("magic"), or nothing left ("empty")."""
    out = bytearray(blob)
    if how == "truncate":
        return bytes(out[:-3])
    if how == "flip":
        out[40] ^= 0xFF
        return bytes(out)
    if how == "magic":
        out[0:2] = b"XX"
        return bytes(out)
    if how == "empty":
        return b""
    raise ValueError(f"unknown damage {how!r}")


def wait_until(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
