"""Stored local features: compact, faithful, and damage is caught."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from imagesearch.core.feature_codec import (
    CODEBOOK_SHA256,
    CODECS,
    codebook_file,
    decode_features,
    encode_features,
    record_size,
)
from imagesearch.core.local_features import FEATURE_MODES, extract
from imagesearch.errors import FeatureDataError
from tests.conftest import damaged, skimage_photo


@pytest.fixture(scope="module")
def features():  # type: ignore[no-untyped-def]
    return extract(Image.fromarray(skimage_photo("astronaut")), 384, 1000,
                   original_size=(4096, 4096))  # a reduced decode of a big square photo


def test_the_shipped_codebooks_are_the_ones_stored_codes_depend_on() -> None:
    assert set(CODEBOOK_SHA256) == set(CODECS) >= {m.codec for m in FEATURE_MODES.values()}
    for name, digest in CODEBOOK_SHA256.items():
        assert hashlib.sha256(codebook_file(name).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("mode", sorted(FEATURE_MODES))
def test_round_trip_and_size(features, mode: str) -> None:  # type: ignore[no-untyped-def]
    m = FEATURE_MODES[mode]
    part = features.take(slice(0, m.count))
    blob = encode_features(part, m.codec)
    assert len(blob) == record_size(len(part), m.codec)
    back = decode_features(blob)
    assert (back.width, back.height) == (4096, 4096) and len(back) == len(part)
    # Positions within a 1024th of the side, scale within a sixth of an octave,
    # angle within 3 degrees, descriptors close to what was found.
    assert np.abs(back.xy - part.xy).max() <= 4096 / 1023
    assert np.abs(np.log2(back.scale / part.scale)).max() <= 12 / 63
    assert np.abs((back.angle - part.angle + 180) % 360 - 180).max() <= 360 / 64
    cosine = (back.descriptors * part.descriptors).sum(axis=1)
    assert cosine.mean() > {"rq5": 0.93, "pq16": 0.96}[m.codec]


def test_the_compact_mode_keeps_within_2_kb_a_photo() -> None:
    m = FEATURE_MODES["compact"]
    assert record_size(m.count, m.codec) <= 2048


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic", "empty"])
def test_damaged_records_are_refused(features, damage: str) -> None:  # type: ignore[no-untyped-def]
    blob = damaged(encode_features(features.take(slice(0, 50)), "rq5"), damage)
    with pytest.raises(FeatureDataError):
        decode_features(blob)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_a_broken_codebook_stores_no_details_rather_than_none_found(
        tmp_path, monkeypatch: pytest.MonkeyPatch, codec: str) -> None:  # type: ignore[no-untyped-def]
    """A photo stored as having no keypoints is never looked at again: that must not
    happen because the installation is broken, only because the photo has none."""
    from imagesearch.core import feature_codec
    from imagesearch.core.imaging import decode_for_model
    from imagesearch.core.local_features import FeatureMode, empty_features
    from imagesearch.errors import InstallationError

    (tmp_path / f"rootsift_{codec}.npy").write_bytes(b"not a codebook")
    monkeypatch.setattr(feature_codec, "CODEBOOK_DIR", tmp_path)
    feature_codec._codebook.cache_clear()
    feature_codec._residual_quantizer.cache_clear()
    try:
        with pytest.raises(InstallationError, match="reinstall"):
            encode_features(empty_features(10, 10), codec)
        photo = tmp_path / "photo.png"
        Image.fromarray(skimage_photo("astronaut")).save(photo)
        result = decode_for_model(photo, None, FeatureMode("test", 384, 50, codec))
        assert result.error is None and result.local_features is None
    finally:
        feature_codec._codebook.cache_clear()
        feature_codec._residual_quantizer.cache_clear()
