"""AMES pieces on their own: the stored record, codes, input sizes, boxes, loading errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from imagesearch.core.ames.backbone import load_state, snapped_size
from imagesearch.core.ames.binarize import binarize, hamming, signs
from imagesearch.core.ames.boxes import correspondences, verified_box
from imagesearch.core.ames.codec import (
    KIND_BITS,
    KIND_FP16,
    AmesRecord,
    decode_record,
    encode_record,
)
from imagesearch.core.ames.detector import cell_centres
from imagesearch.core.ames.keymap import ames_from_official, vit_shape
from imagesearch.errors import FeatureDataError, ModelLoadError
from tests.ames_random import ames_arrays, dinov2_arrays, tensors
from tests.conftest import damaged


def _record(n: int = 80, kind: int = KIND_BITS) -> AmesRecord:
    rng = np.random.default_rng(n)
    data = rng.integers(0, 256, (n, 16), dtype=np.uint8) if kind == KIND_BITS \
        else rng.standard_normal((n, 8)).astype(np.float16)
    cells = np.stack([rng.integers(0, 55, n), rng.integers(0, 41, n)], 1).astype(np.uint8)
    return AmesRecord(kind, data, cells, (55, 41), 4000, 3000)


def test_record_round_trip_and_size() -> None:
    for kind in (KIND_BITS, KIND_FP16):
        rec = _record(kind=kind)
        back = decode_record(encode_record(rec))
        assert back.kind == kind and back.grid == (55, 41) and (back.width, back.height) == \
            (4000, 3000)
        np.testing.assert_array_equal(back.data, rec.data)
        np.testing.assert_array_equal(back.cells, rec.cells)
    # 80 binary descriptors with positions stay within the 1.6 KB a photo budget.
    assert len(encode_record(_record(80))) == 1464
    assert len(decode_record(encode_record(_record(0)))) == 0


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic", "grid", "empty"])
def test_damaged_records_are_refused(damage: str) -> None:
    if damage == "grid":
        rec = _record(10)
        bad = AmesRecord(rec.kind, rec.data, rec.cells, (3, 3), 10, 10)  # cells beyond it
        blob = encode_record(bad)
    else:
        blob = damaged(encode_record(_record(10)), damage)
    with pytest.raises(FeatureDataError):
        decode_record(blob)


def test_codes_follow_the_projection_sign() -> None:
    rng = np.random.default_rng(0)
    desc = rng.standard_normal((5, 32)).astype(np.float32)
    proj = rng.standard_normal((32, 128)).astype(np.float32)
    codes = binarize(desc, proj)
    assert codes.shape == (5, 16) and codes.dtype == np.uint8
    expected = np.where(desc / np.linalg.norm(desc, axis=1, keepdims=True) @ proj >= 0, 1, -1)
    np.testing.assert_array_equal(signs(codes), expected)
    d = hamming(codes, codes)
    assert (np.diag(d) == 0).all() and d[0, 1] == int((expected[0] != expected[1]).sum())


def test_input_sides_are_multiples_of_the_patch() -> None:
    assert snapped_size(4000, 3000, 770) == (770, 574)  # 55 x 41 patches
    assert snapped_size(3000, 4000, 770) == (574, 770)
    assert snapped_size(100, 10, 770) == (770, 84)
    w, h = snapped_size(1, 5000, 770)
    assert (w, h) == (14, 770)


def test_cell_centres_are_in_original_pixels() -> None:
    cells = np.array([[0, 0], [54, 40]], np.uint8)
    xy = cell_centres(cells, (55, 41), 4000, 3000)
    np.testing.assert_allclose(xy[0], [0.5 * 4000 / 55, 0.5 * 3000 / 41], rtol=1e-6)
    np.testing.assert_allclose(xy[1], [54.5 * 4000 / 55, 40.5 * 3000 / 41], rtol=1e-6)


def test_box_from_matched_codes_under_a_similarity() -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (30, 16), dtype=np.uint8)
    query_xy = rng.uniform(0, 400, (30, 2)).astype(np.float32)
    # The photo shows the query's object at half size, shifted: 12 of its codes, plus
    # 20 unrelated ones.
    photo_codes = np.concatenate([codes[:12], rng.integers(0, 256, (20, 16), np.uint8)])
    photo_xy = np.concatenate([query_xy[:12] * 0.5 + [300, 100],
                               rng.uniform(0, 1000, (20, 2))]).astype(np.float32)
    qi, pj = correspondences(codes, photo_codes, binary=True)
    assert set(zip(qi.tolist(), pj.tolist(), strict=True)) >= {(i, i) for i in range(12)}
    box, inliers = verified_box(query_xy, photo_xy, qi, pj, (10.0, 10.0))
    assert box is not None and inliers >= 12
    inside = query_xy[:12] * 0.5 + [300, 100]
    x0, y0 = inside.min(0) - 5
    x1, y1 = inside.max(0) + 5
    assert box == pytest.approx((x0, y0, x1, y1), abs=1e-3)


def test_no_box_without_consistent_geometry() -> None:
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 256, (12, 16), dtype=np.uint8)
    box, _ = verified_box(rng.uniform(0, 400, (12, 2)), rng.uniform(0, 400, (12, 2)),
                          *correspondences(codes, codes, binary=True), (10.0, 10.0))
    assert box is None
    assert verified_box(np.zeros((2, 2)), np.zeros((2, 2)), np.arange(2), np.arange(2),
                        (1.0, 1.0)) == (None, 0)


def test_checkpoint_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="registers"):
        vit_shape({"cls_token": tensors(dinov2_arrays(0, dim=64, depth=1, grid=2))
                   ["cls_token"]})
    with pytest.raises(ModelLoadError, match="not an AMES checkpoint"):
        ames_from_official({"state": {"something": 1}})
    extra = tensors(ames_arrays(0, True, local_dim=8))
    extra["decoder.layers.0.surprise"] = extra["mtc_token"]
    with pytest.raises(ModelLoadError, match="unexpected"):
        ames_from_official({"state": extra})
    # weights_only loading refuses a pickle that would run code.
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_Boom(tmp_path / "boom"), protocol=2))
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_state(evil)
    assert not (tmp_path / "boom").exists()  # unpickling would have made it
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError):
        load_state(tmp_path / "garbage.pt")


class _Boom:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.mkdir, (str(self.target),))
