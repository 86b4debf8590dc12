"""Parity with the official code: DINOv2 (facebookresearch/dinov2), the AMES detector and
matcher (pavelsuma/ames) were run once, outside this project, on seeded random weights
(tests/ames_random.py) and the inputs below; their outputs are tests/data/ames_parity.npz.
Here the same weights go through our key mapping into our modules, which must agree to
1e-4. tools/make_ames_parity.py is the script that ran the official code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.ames_random import ames_arrays, detector_arrays, dinov2_arrays, tensors

FIXTURE = Path(__file__).parent / "data" / "ames_parity.npz"
SEEDS = {"dinov2": 11, "detector": 12, "ames_dist": 13, "ames_fp": 14, "inputs": 15}
TOL = 1e-4


def parity_inputs() -> dict[str, np.ndarray | int]:
    """A 98 x 126 image (7 x 9 patches: rows and columns differ, so a swap shows), and
    descriptor sets for the matcher: one query of 12 (2 padded), three photos of 10."""
    rng = np.random.default_rng(SEEDS["inputs"])
    src = rng.standard_normal((1, 12, 768), dtype=np.float32)
    src_mask = np.zeros((1, 12), bool)
    src_mask[0, 10:] = True
    tgt = rng.standard_normal((3, 10, 768), dtype=np.float32)
    tgt_mask = np.zeros((3, 10), bool)
    tgt_mask[1, 7:] = True
    tgt_mask[2, 4:] = True
    src[src_mask] = 0.0  # padding is zeros in the reference's stored arrays
    tgt[tgt_mask] = 0.0
    return {"image": rng.integers(0, 256, (98, 126, 3), dtype=np.uint8),
            "src": src, "src_mask": src_mask, "tgt": tgt, "tgt_mask": tgt_mask, "top": 20}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def backbone():  # type: ignore[no-untyped-def]
    from imagesearch.core.ames.backbone import build_backbone

    return build_backbone(tensors(dinov2_arrays(SEEDS["dinov2"])))


def _tokens(backbone) -> np.ndarray:  # type: ignore[no-untyped-def]
    import torch
    from PIL import Image

    from imagesearch.core.ames.backbone import model_input

    image = Image.fromarray(parity_inputs()["image"])
    pixels = model_input(image, max_side=126)
    assert pixels.shape == (3, 98, 126)  # already a multiple of 14: not resized
    with torch.inference_mode():
        return backbone.patch_tokens(torch.from_numpy(pixels)[None])[0].numpy()


def test_fixture_is_small() -> None:
    assert FIXTURE.stat().st_size < 1_000_000


def test_dinov2_patch_tokens_match_the_official_model(backbone, reference) -> None:  # type: ignore[no-untyped-def]
    ours = _tokens(backbone)
    assert ours.shape == reference["patch_tokens"].shape == (63, 768)
    assert np.abs(ours - reference["patch_tokens"]).max() < TOL


def test_timm_own_dinov2_conversion_agrees_with_ours() -> None:
    from timm.models.vision_transformer import _convert_dinov2

    from imagesearch.core.ames.keymap import dinov2_to_timm

    official = tensors(dinov2_arrays(SEEDS["dinov2"], depth=1, grid=2, dim=64))
    mine = dinov2_to_timm(dict(official))
    theirs = _convert_dinov2(dict(official), None)
    assert mine.keys() == theirs.keys()
    assert all(bool((mine[k] == theirs[k]).all()) for k in mine)


def test_detector_descriptors_weights_and_positions(backbone, reference) -> None:  # type: ignore[no-untyped-def]
    import torch

    from imagesearch.core.ames.detector import build_detector, select
    from imagesearch.core.ames.keymap import detector_from_official

    state = {"state": tensors(detector_arrays(SEEDS["detector"])), "epoch": 3}
    detector = build_detector(detector_from_official(state), 768)
    tokens = torch.from_numpy(_tokens(backbone))[None]
    with torch.inference_mode():
        descriptors, weights = detector(tokens)
    found = select(descriptors[0], weights[0], (9, 7), 20, (126, 98))
    assert np.abs(found.descriptors - reference["detector_descriptors"]).max() < TOL
    assert np.abs(found.weights - reference["detector_weights"]).max() < TOL
    # The reference stores (row, column) centres over (height, width): y first. Ours are
    # (x, y) in the original's pixels.
    ref = reference["official_locations"]
    np.testing.assert_allclose(found.xy[:, 0] / 126, ref[:, 1], atol=1e-6)
    np.testing.assert_allclose(found.xy[:, 1] / 98, ref[:, 0], atol=1e-6)


@pytest.mark.parametrize("variant", ["dist", "fp"])
def test_matcher_logits_match_the_official_model(variant: str, reference) -> None:  # type: ignore[no-untyped-def]
    import torch

    from imagesearch.core.ames.binarize import binarize, signs
    from imagesearch.core.ames.keymap import ames_from_official
    from imagesearch.core.ames.matcher import build_matcher

    binarized = variant == "dist"
    state, found_binary = ames_from_official(
        {"state": tensors(ames_arrays(SEEDS["ames_" + variant], binarized))})
    assert found_binary is binarized
    matcher = build_matcher(state, binarized)
    inp = parity_inputs()

    def values(x: np.ndarray) -> torch.Tensor:
        flat = x.reshape(-1, 768)
        if binarized:
            flat = signs(binarize(flat, state["projection"].numpy()))
        return torch.from_numpy(flat.reshape(*x.shape[:2], -1))

    src, tgt = values(inp["src"]), values(inp["tgt"])  # type: ignore[arg-type]
    with torch.inference_mode():
        logits = matcher(matcher.tokens(src).expand(3, -1, -1),
                         torch.from_numpy(inp["src_mask"]).expand(3, -1),  # type: ignore[arg-type]
                         matcher.tokens(tgt), torch.from_numpy(inp["tgt_mask"])).numpy()  # type: ignore[arg-type]
    expected = reference[f"logits_{variant}"]
    assert np.abs(logits - expected).max() < TOL
    assert len(set(np.round(expected, 3).tolist())) == 3  # the three pairs differ
