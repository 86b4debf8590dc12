"""Decoding and preprocessing: same embedding as open_clip's own preprocess, safe decoding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagesearch.core.imaging import (
    PreprocessSpec,
    decode_for_model,
    load_query_image,
    model_pixels,
    normalize,
    open_image,
    to_rgb,
)
from tests.conftest import skimage_photo

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def _open_clip_reference(shared_encoder, path: Path):  # type: ignore[no-untyped-def]
    """Embed with open_clip's own eval transform on the fully decoded image."""
    import open_clip
    import torch

    model = shared_encoder._model
    cfg = model.visual.preprocess_cfg
    transform = open_clip.image_transform(
        cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"],
        interpolation=cfg["interpolation"], resize_mode=cfg["resize_mode"])
    with Image.open(path) as img:
        x = transform(img).unsqueeze(0)
    with torch.inference_mode():
        v = model.encode_image(x).float().numpy()[0]
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("name", PHOTOS)
def test_embedding_matches_open_clip_preprocess(shared_encoder, tmp_path: Path,
                                                name: str) -> None:
    # Upscaled 3x so JPEG draft decoding (DCT scaling) really kicks in.
    img = Image.fromarray(skimage_photo(name))
    img = img.resize((img.width * 3, img.height * 3), Image.Resampling.BICUBIC)
    path = tmp_path / f"{name}.jpg"
    img.save(path, quality=92)

    decoded = decode_for_model(path, shared_encoder.spec)
    assert decoded.error is None and decoded.pixels is not None
    ours = shared_encoder.encode_images(decoded.pixels[None])[0]
    reference = _open_clip_reference(shared_encoder, path)
    assert float(ours @ reference) >= 0.999


def test_pixels_equal_open_clip_without_draft(shared_encoder, tmp_path: Path) -> None:
    """On a PNG (no draft decoding) our tensor is open_clip's, to float rounding."""
    import open_clip

    path = tmp_path / "coffee.png"
    Image.fromarray(skimage_photo("coffee")).save(path)
    cfg = shared_encoder._model.visual.preprocess_cfg
    transform = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"],
                                          std=cfg["std"], interpolation=cfg["interpolation"],
                                          resize_mode=cfg["resize_mode"])
    with Image.open(path) as img:
        reference = transform(img).numpy()
    ours = normalize(decode_for_model(path, shared_encoder.spec).pixels[None],
                     shared_encoder.spec)[0]
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 1e-4


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
def test_resize_modes_give_model_size(mode: str) -> None:
    spec = PreprocessSpec(size=64, resize_mode=mode)
    img = Image.fromarray(skimage_photo("rocket"))  # 427x640, portrait-ish
    assert model_pixels(img, spec).shape == (64, 64, 3)


def test_draft_decoding_keeps_big_jpegs_small(tmp_path: Path) -> None:
    big = Image.fromarray(skimage_photo("astronaut")).resize((4000, 3000))
    data = io.BytesIO()
    big.save(data, format="JPEG", quality=85)
    img, facts = open_image(data.getvalue(), "big.jpg", draft_size=224)
    assert (facts.width, facts.height) == (4000, 3000)  # the photo's real size is recorded
    assert 224 <= min(img.size) < 1000  # ...but the decoder only produced a reduced copy


def test_exif_orientation_applied(tmp_path: Path) -> None:
    arr = np.zeros((60, 100, 3), np.uint8)
    arr[:, :50] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes())
    decoded = decode_for_model(path, PreprocessSpec(size=32, resize_mode="squash"))
    assert (decoded.width, decoded.height) == (60, 100)
    top, bottom = decoded.pixels[:8].mean(), decoded.pixels[-8:].mean()
    assert top > 200 and bottom < 50  # the white half is now on top


def test_modes_convert_to_rgb() -> None:
    sixteen = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    assert np.asarray(to_rgb(sixteen)).min() == 255
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    assert np.asarray(to_rgb(pal)).min() == 255  # transparent shows as white, not black
    assert to_rgb(Image.new("CMYK", (4, 4))).mode == "RGB"


def test_query_image_errors_are_readable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an image"):
        load_query_image(b"definitely not an image", PreprocessSpec())
    with pytest.raises(ValueError, match="cannot read"):
        load_query_image(tmp_path / "missing.jpg", PreprocessSpec())
