"""Local features and spatial verification on generated pairs with known geometry."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from imagesearch.core.feature_codec import decode_features, encode_features
from imagesearch.core.local_features import (
    FEATURE_MODES,
    QUERY_COUNT,
    QUERY_MAX_SIDE,
    extract,
    mirrored,
)
from imagesearch.core.spatial_verification import QueryFeatures, verify
from tests.conftest import skimage_photo
from tests.instance_scenes import iou, scene, similarity

OBJECT = skimage_photo("astronaut")  # 512 x 512
CENTRE = (256.0, 256.0)


def stored(pixels: np.ndarray, mode: str = "compact"):  # type: ignore[no-untyped-def]
    """A library photo's features as search sees them: extracted, stored, read back."""
    m = FEATURE_MODES[mode]
    found = extract(Image.fromarray(pixels), m.max_side, m.count)
    return decode_features(encode_features(found, m.codec))


@pytest.fixture(scope="module")
def query() -> QueryFeatures:
    return QueryFeatures(extract(Image.fromarray(OBJECT), QUERY_MAX_SIDE, QUERY_COUNT))


@pytest.mark.parametrize(("name", "matrix", "mirror"), [
    ("half size, turned 30 degrees", similarity(0.5, 30, 400, 300, CENTRE), False),
    ("upside down", similarity(0.6, 180, 380, 300, CENTRE), False),
    ("a quarter of the size (4x scale change)", similarity(0.25, -15, 300, 250, CENTRE),
     False),
    ("perspective", np.array([[0.55, 0.08, 150], [-0.05, 0.5, 120], [2e-4, 1e-4, 1.0]]),
     False),
    ("mirrored", similarity(0.5, 10, 420, 280, CENTRE), True),
    ("mirrored and turned", similarity(0.5, 120, 420, 300, CENTRE), True),
])
def test_the_object_is_verified_and_boxed(query: QueryFeatures, name: str,
                                          matrix: np.ndarray, mirror: bool) -> None:
    pixels, truth = scene(OBJECT, matrix, (800, 600), mirror=mirror)
    mode = "detailed" if "quarter" in name else "compact"
    (result,) = verify(QueryFeatures(query.plain, FEATURE_MODES[mode].codec),
                       [stored(pixels, mode)])
    assert result is not None and result.verified, name
    assert result.mirrored == mirror
    assert result.box is not None and iou(result.box, truth) >= 0.6, (name, result, truth)


def test_an_object_at_15_percent_of_the_frame_height_in_detailed_mode(
        query: QueryFeatures) -> None:
    matrix = similarity(0.18, 25, 500, 380, CENTRE)  # ~92 px of a 600 px tall frame
    pixels, truth = scene(OBJECT, matrix, (800, 600), seed=3)
    (result,) = verify(query, [stored(pixels, "detailed")])
    assert result is not None and result.verified
    assert result.box is not None and iou(result.box, truth) >= 0.5


def test_another_object_is_not_verified(query: QueryFeatures) -> None:
    other = skimage_photo("coffee")
    pixels, _ = scene(other, similarity(0.7, 0, 400, 300, (300, 200)), (800, 600))
    (result,) = verify(query, [stored(pixels)])
    assert result is not None and not result.verified and result.box is None


def test_blur_and_heavy_compression(query: QueryFeatures, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import ImageFilter

    pixels, truth = scene(OBJECT, similarity(0.55, -40, 400, 300, CENTRE), (800, 600))
    degraded = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1.5))
    degraded.save(tmp_path / "q20.jpg", quality=20)
    with Image.open(tmp_path / "q20.jpg") as img:
        (result,) = verify(query, [stored(np.asarray(img.convert("RGB")))])
    assert result is not None and result.verified
    assert result.box is not None and iou(result.box, truth) >= 0.6


def test_boxes_are_in_pixels_of_the_original_whatever_the_decode_size(
        query: QueryFeatures) -> None:
    pixels, truth = scene(OBJECT, similarity(0.5, 0, 400, 300, CENTRE), (800, 600))
    small = Image.fromarray(pixels).resize((400, 300))  # a reduced decode of an 800 x 600
    m = FEATURE_MODES["compact"]
    found = extract(small, m.max_side, m.count, original_size=(800, 600))
    assert found.width == 800 and found.xy[:, 0].max() > 400
    (result,) = verify(query, [decode_features(encode_features(found, m.codec))])
    assert result is not None and result.box is not None and iou(result.box, truth) >= 0.6


def test_cancelled_verification_leaves_the_rest_undone(query: QueryFeatures) -> None:
    pixels, _ = scene(OBJECT, similarity(0.5, 0, 400, 300, CENTRE), (800, 600))
    photo = stored(pixels)
    cancel = threading.Event()
    cancel.set()
    assert verify(query, [photo, photo], cancel) == [None, None]


def test_a_re_rank_checks_its_cancel_flag_every_few_thousand_keypoints(
        query: QueryFeatures, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches are cut by keypoints, not photos: a detailed photo (1,000 keypoints) counts
    for four compact ones. After the first batch is cancelled, the rest are not decoded."""
    from imagesearch.core import spatial_rerank
    from imagesearch.core.feature_codec import encode_features
    from imagesearch.core.local_features import FEATURE_MODES
    from imagesearch.core.spatial_rerank import SpatialReranker

    mode = FEATURE_MODES["detailed"]
    pixels, _ = scene(OBJECT, similarity(0.5, 0, 400, 300, CENTRE), (800, 600))
    blob = encode_features(extract(Image.fromarray(pixels), mode.max_side, mode.count),
                           mode.codec)
    photo = decode_features(blob)
    monkeypatch.setattr(spatial_rerank, "_BATCH_ROWS", 2 * len(photo))
    cancel, decoded = threading.Event(), []

    def decode(data: bytes):  # type: ignore[no-untyped-def]
        decoded.append(data)
        return decode_features(data)

    def verify_then_cancel(*args, **kwargs):  # type: ignore[no-untyped-def]
        results = verify(*args, **kwargs)
        cancel.set()  # the user starts another search as the first batch is verified
        return results

    monkeypatch.setattr(spatial_rerank, "decode_features", decode)
    monkeypatch.setattr(spatial_rerank, "verify", verify_then_cancel)
    reranker = SpatialReranker(mode.extractor_id)
    outcome = reranker.score(reranker.prepare_features(query.plain),
                             {i: blob for i in range(7)}, cancel)
    assert not outcome.complete and sorted(outcome.evidence) == [0, 1]
    assert len(decoded) == 2 and all(e.match > 0 for e in outcome.evidence.values())


def test_mirrored_descriptors_match_extraction_on_the_mirror_image() -> None:
    """The permutation that mirrors a SIFT descriptor, checked against SIFT itself."""
    img = Image.fromarray(OBJECT)
    plain = extract(img, 512, 400)
    flipped = extract(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 512, 400)
    predicted = mirrored(plain)
    # Pair keypoints by position: the mirror's keypoint at x is the original's at w - x.
    d = np.linalg.norm(predicted.xy[:, None] - flipped.xy[None], axis=2)
    pairs = [(i, int(j)) for i, j in enumerate(d.argmin(axis=1)) if d[i, j] < 0.5]
    assert len(pairs) > 50
    i, j = np.array(pairs).T
    same = (predicted.descriptors[i] * flipped.descriptors[j]).sum(axis=1)
    unpermuted = (plain.descriptors[i] * flipped.descriptors[j]).sum(axis=1)
    assert np.median(same) > 0.95 > np.median(unpermuted)
    angle = np.abs((predicted.angle[i] - flipped.angle[j] + 180) % 360 - 180)
    assert np.median(angle) < 5


def test_a_textureless_image_has_no_features() -> None:
    flat = Image.new("RGB", (300, 200), (120, 130, 140))
    found = extract(flat, 384, 160)
    assert len(found) == 0 and (found.width, found.height) == (300, 200)
    back = decode_features(encode_features(found, "rq5"))
    assert len(back) == 0
    (result,) = verify(QueryFeatures(found), [back])
    assert result is not None and not result.verified


def test_a_few_inliers_that_resist_refinement_still_box_the_whole_object() -> None:
    """Five correspondences, one a little off: the least-squares refinement drops it and
    stops, so the box comes from a similarity fitted to the inliers, not their hull."""
    from imagesearch.core.local_features import LocalFeatures
    from imagesearch.core.spatial_verification import verify_pair

    # The query is a 400 x 300 object; the photo shows it at half size, turned 30 degrees,
    # with its centre at (500, 400) of a 1000 x 800 photo.
    qxy = np.array([[100, 80], [300, 100], [200, 220], [120, 200], [280, 60]], np.float32)
    scale, turn = 0.5, np.radians(30.0)
    rotate = scale * np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    dxy = ((qxy - [200, 150]) @ rotate.T + [500, 400]).astype(np.float32)
    dxy[4] += [24.0, 0.0]  # 2.4% of the photo's side: a hypothesis inlier, not a refined one
    n = len(qxy)
    q = LocalFeatures(np.eye(n, 128, dtype=np.float32), qxy, np.full(n, 8.0, np.float32),
                      np.zeros(n, np.float32), 400, 300)
    d = LocalFeatures(np.eye(n, 128, dtype=np.float32), dxy, np.full(n, 4.0, np.float32),
                      np.full(n, 30.0, np.float32), 1000, 800)
    corners = (np.array([[0, 0], [400, 0], [400, 300], [0, 300]]) - [200, 150]) @ rotate.T \
        + [500, 400]
    truth = (*corners.min(axis=0), *corners.max(axis=0))
    result = verify_pair(q, d, np.arange(n), np.arange(n), np.ones(n, np.float32))
    assert result.verified and result.box is not None
    assert iou(result.box, truth) >= 0.8


def test_the_least_squares_similarity_recovers_scale_angle_and_shift() -> None:
    from imagesearch.core.spatial_verification import _least_squares_similarity

    rng = np.random.default_rng(0)
    src = rng.random((6, 2)) * 300
    scale, turn = 1.7, np.radians(-40.0)
    rotate = scale * np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    dst = src @ rotate.T + [12.0, -30.0]
    fitted = _least_squares_similarity(src, dst)
    assert fitted is not None
    assert np.allclose(fitted[:2, :2], rotate) and np.allclose(fitted[:2, 2], [12.0, -30.0])
    assert np.linalg.det(fitted[:2, :2]) > 0  # never a reflection
    assert _least_squares_similarity(np.ones((3, 2)), dst[:3]) is None  # one point thrice


def test_inliers_bunched_in_a_few_pixels_do_not_blow_the_box_up() -> None:
    """Noise sets the scale of a fit to points a few pixels apart; keypoints of equal size
    on both sides say the object did not grow, so the frame is not projected."""
    from imagesearch.core.local_features import LocalFeatures
    from imagesearch.core.spatial_verification import verify_pair

    rng = np.random.default_rng(3)
    n = 5
    qxy = (np.array([200.0, 150.0]) + rng.uniform(-2, 2, (n, 2))).astype(np.float32)
    dxy = (np.array([500.0, 400.0]) + rng.uniform(-25, 25, (n, 2))).astype(np.float32)
    q = LocalFeatures(np.eye(n, 128, dtype=np.float32), qxy, np.full(n, 6.0, np.float32),
                      np.zeros(n, np.float32), 400, 300)
    d = LocalFeatures(np.eye(n, 128, dtype=np.float32), dxy, np.full(n, 6.0, np.float32),
                      np.zeros(n, np.float32), 1000, 800)
    result = verify_pair(q, d, np.arange(n), np.arange(n), np.ones(n, np.float32))
    if result.box is not None:
        x0, y0, x1, y1 = result.box
        assert (x1 - x0) * (y1 - y0) < 0.25 * 1000 * 800


def test_correspondences_turned_every_which_way_are_not_inliers() -> None:
    """Keypoints in the right places by chance, but each turned its own way, are no match;
    the same places with the turn the geometry implies are."""
    from imagesearch.core.local_features import LocalFeatures
    from imagesearch.core.spatial_verification import verify_pair

    rng = np.random.default_rng(5)
    n = 8  # turned in steps of 45 degrees: no two agree within MAX_TURN
    qxy = rng.uniform(20, 380, (n, 2)).astype(np.float32)
    turn = np.radians(50.0)
    rotate = 0.8 * np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    dxy = ((qxy - [200, 150]) @ rotate.T + [500, 400]).astype(np.float32)
    q_angle = rng.uniform(0, 360, n).astype(np.float32)
    q = LocalFeatures(np.eye(n, 128, dtype=np.float32), qxy, np.full(n, 8.0, np.float32),
                      q_angle, 400, 300)

    def photo(angle: np.ndarray) -> LocalFeatures:
        return LocalFeatures(np.eye(n, 128, dtype=np.float32), dxy,
                             np.full(n, 6.4, np.float32), angle.astype(np.float32), 1000, 800)

    agreeing = photo(np.mod(q_angle + 50.0, 360.0))
    scattered = photo(np.mod(q_angle + 50.0 + np.arange(n) * 360.0 / n, 360.0))
    same = (np.arange(n), np.arange(n), np.ones(n, np.float32))
    assert verify_pair(q, agreeing, *same).inliers == n
    assert not verify_pair(q, scattered, *same).verified


def test_three_inliers_verify_only_when_their_descriptors_look_alike() -> None:
    from imagesearch.core.local_features import LocalFeatures
    from imagesearch.core.spatial_verification import FEW_INLIERS_SIMILARITY, verify_pair

    def pair(n: int) -> tuple[LocalFeatures, LocalFeatures]:
        qxy = np.array([[60, 50], [300, 90], [180, 240], [90, 200]], np.float32)[:n]
        dxy = (qxy * 0.5 + [400, 300]).astype(np.float32)
        q = LocalFeatures(np.eye(n, 128, dtype=np.float32), qxy, np.full(n, 8.0, np.float32),
                          np.zeros(n, np.float32), 400, 300)
        d = LocalFeatures(np.eye(n, 128, dtype=np.float32), dxy, np.full(n, 4.0, np.float32),
                          np.zeros(n, np.float32), 1000, 800)
        return q, d

    threshold = FEW_INLIERS_SIMILARITY["rq5"]
    q, d = pair(4)
    d.xy[3] += [300.0, 250.0]  # the fourth correspondence is no inlier, and unlike
    sims = np.array([threshold + 0.05, threshold + 0.01, threshold + 0.02, 0.1], np.float32)
    # The mean of the inliers' similarities decides, not of all correspondences'.
    alike = verify_pair(q, d, np.arange(4), np.arange(4), sims, few_alike=threshold)
    assert alike.inliers == 3 and alike.verified and alike.box is not None
    q, d = pair(3)
    three = (np.arange(3), np.arange(3))
    sims = sims[:3]
    unlike = verify_pair(q, d, *three, sims - 0.07, few_alike=threshold)
    assert unlike.inliers == 3 and not unlike.verified and unlike.box is None
    detailed = verify_pair(q, d, *three, sims, few_alike=None)  # finer codes: four needed
    assert detailed.inliers == 3 and not detailed.verified
    q, d = pair(4)
    four = verify_pair(q, d, np.arange(4), np.arange(4), np.full(4, threshold - 0.07,
                                                                    np.float32))
    assert four.verified and four.box is not None


def test_three_alike_inliers_count_only_for_the_compact_codec() -> None:
    from imagesearch.core.local_features import COMPACT_LIBRARY_MODE, FEATURE_MODES
    from imagesearch.core.spatial_rerank import SpatialReranker
    from imagesearch.core.spatial_verification import FEW_INLIERS_SIMILARITY

    compact = FEW_INLIERS_SIMILARITY["rq5"]
    assert SpatialReranker(FEATURE_MODES["compact"].extractor_id).few_alike == compact
    assert SpatialReranker(COMPACT_LIBRARY_MODE.extractor_id).few_alike == compact
    assert SpatialReranker(FEATURE_MODES["detailed"].extractor_id).few_alike is None


def test_turns_agree_across_north() -> None:
    """A keypoint at 350 degrees in the query and 10 in the photo turned 20 degrees: an
    inlier of the proposal, as is one turned by 20 degrees anywhere else; one turned by 60
    is not (angles are degrees in LocalFeatures, compared in radians)."""
    from imagesearch.core.local_features import LocalFeatures
    from imagesearch.core.spatial_verification import _best_similarities

    qxy = np.array([[100, 100], [140, 100], [100, 140], [140, 140]], np.float32)
    q_angle = np.array([350.0, 10.0, 180.0, 100.0], np.float32)
    d_angle = np.mod(q_angle + np.array([20.0, 20.0, 20.0, 60.0]), 360.0).astype(np.float32)
    turn = np.radians(20.0)
    rotate = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    dxy = (qxy @ rotate.T + [300, 200]).astype(np.float32)
    q = LocalFeatures(np.eye(4, 128, dtype=np.float32), qxy, np.full(4, 8.0, np.float32),
                      q_angle, 400, 300)
    d = LocalFeatures(np.eye(4, 128, dtype=np.float32), dxy, np.full(4, 8.0, np.float32),
                      d_angle, 1000, 800)
    sims = np.array([0.9, 0.8, 0.7, 0.6], np.float32)  # proposals in this order
    (mask,) = _best_similarities([(q, d, np.arange(4), np.arange(4), sims)])
    assert mask.tolist() == [True, True, True, False]


def _correspondences(rng: np.random.Generator, n: int, consistent: int):  # type: ignore[no-untyped-def]
    """A query and a photo with ``n`` correspondences, the first ``consistent`` of them
    placed, sized and turned by one similarity, the rest anywhere; similarities with ties."""
    from imagesearch.core.local_features import LocalFeatures

    qxy = rng.uniform(0, 400, (n, 2)).astype(np.float32)
    dxy = rng.uniform(0, 1000, (n, 2)).astype(np.float32)
    dxy[:consistent] = qxy[:consistent] @ (0.6 * np.array([[0.8, -0.6], [0.6, 0.8]])).T + 200
    q_angle = rng.uniform(0, 360, n).astype(np.float32)
    d_angle = rng.uniform(0, 360, n).astype(np.float32)
    d_angle[:consistent] = np.mod(q_angle[:consistent] + np.degrees(np.arctan2(0.6, 0.8)), 360)
    q_scale = rng.uniform(4, 20, n).astype(np.float32)
    d_scale = rng.uniform(2, 30, n).astype(np.float32)
    d_scale[:consistent] = 0.6 * q_scale[:consistent]
    q = LocalFeatures(np.zeros((n, 128), np.float32), qxy, q_scale, q_angle, 400, 400)
    # Photos of different sizes: different tolerances in pixels.
    d = LocalFeatures(np.zeros((n, 128), np.float32), dxy, d_scale, d_angle, 600 + 9 * n, 800)
    sims = np.round(rng.uniform(0.7, 1.0, n), 2).astype(np.float32)
    return q, d, np.arange(n), np.arange(n), sims


def _one_photo_at_a_time(q, d, qi, di, sim):  # type: ignore[no-untyped-def]
    """The proposals of one photo scored by a plain loop (in float64, as the batched
    scoring computes): the reference the batched scoring must agree with."""
    from imagesearch.core.spatial_verification import (
        HYPOTHESES,
        HYPOTHESIS_TOL,
        MAX_LOG_SCALE,
        MAX_TURN,
    )

    side = float(max(d.width, d.height))
    qp, dp = q.xy[qi].astype(np.float64), d.xy[di].astype(np.float64)
    ratio = (d.scale[di] / np.maximum(q.scale[qi], 1e-6)).astype(np.float64)
    theta = np.radians((d.angle[di] - q.angle[qi]).astype(np.float64))
    best_mask, best_count = None, -1
    for h in np.argsort(-sim, kind="stable")[:HYPOTHESES]:
        c, s = np.cos(theta[h]) * ratio[h], np.sin(theta[h]) * ratio[h]
        dx, dy = qp[:, 0] - qp[h, 0], qp[:, 1] - qp[h, 1]
        err = np.hypot(c * dx - s * dy + dp[h, 0] - dp[:, 0],
                       s * dx + c * dy + dp[h, 1] - dp[:, 1])
        turn = np.abs(np.remainder(theta - theta[h] + np.pi, 2 * np.pi) - np.pi)
        mask = (err < HYPOTHESIS_TOL * side) & (np.abs(np.log(ratio / ratio[h]))
                                                < MAX_LOG_SCALE) & (turn < MAX_TURN)
        if mask.sum() > best_count:
            best_mask, best_count = mask, int(mask.sum())
    return best_mask


def test_proposals_scored_together_are_scored_as_one_photo_at_a_time() -> None:
    """Many photos' proposals in one set of arrays: each photo's mask is the one a plain
    loop over its own proposals finds (proposals and correspondences never cross photos),
    with more correspondences than proposals, ties in similarity, photos of every size,
    and one without correspondences."""
    from imagesearch.core.spatial_verification import HYPOTHESES, _best_similarities

    rng = np.random.default_rng(11)
    shapes = [(3, 3), (5, 0), (40, 12), (HYPOTHESES + 60, 30), (0, 0), (7, 4), (200, 0),
              (3, 0)]
    photos = [_correspondences(rng, n, c) for n, c in shapes]
    together = _best_similarities(photos)
    for (n, consistent), photo, mask in zip(shapes, photos, together, strict=True):
        assert mask.shape == (n,)
        if n:
            assert np.array_equal(mask, _one_photo_at_a_time(*photo))
        assert mask[:consistent].all()
    assert together[3].sum() >= 30  # the consistent set wins among the many proposals


def test_only_the_most_alike_correspondences_propose_and_the_first_wins_a_tie() -> None:
    from imagesearch.core.spatial_verification import HYPOTHESES, _best_similarities

    rng = np.random.default_rng(3)
    # 100 alike correspondences scattered at random, then 10 less alike ones that agree
    # on one geometry: these rank below the HYPOTHESES proposals, so none of them proposes
    # and their geometry is never found.
    q, d, qi, di, sims = _correspondences(rng, 110, 0)
    consistent = _correspondences(rng, 10, 10)
    for name in ("xy", "scale", "angle"):
        getattr(q, name)[100:] = getattr(consistent[0], name)
        getattr(d, name)[100:] = getattr(consistent[1], name)
    sims[:100], sims[100:] = 0.99, 0.5
    assert HYPOTHESES < 100
    (capped,) = _best_similarities([(q, d, qi, di, sims)])
    assert capped[100:].sum() <= 1
    sims[100:] = 1.0  # now they propose first, and win
    (found,) = _best_similarities([(q, d, qi, di, sims)])
    assert found[100:].all()
    # Six correspondences of equal similarity, each its own only inlier (scales 2.8x
    # apart): every proposal counts one, and the first in order wins.
    q, d, qi, di, _ = _correspondences(rng, 6, 0)
    d.scale[:] = q.scale * np.exp(1.03 * np.arange(6)).astype(np.float32)
    (tie,) = _best_similarities([(q, d, qi, di, np.full(6, 0.9, np.float32))])
    assert tie.tolist() == [True, False, False, False, False, False]


def test_verification_gives_the_same_answers_in_groups_of_any_size(
        query: QueryFeatures, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagesearch.core import spatial_verification

    photos = [stored(scene(OBJECT, similarity(0.5, 30 * i, 400, 300, CENTRE), (800, 600),
                           seed=i)[0]) for i in range(3)]
    photos.append(stored(skimage_photo("coffee")))
    q = QueryFeatures(query.plain, "rq5")
    whole = verify(q, photos)
    monkeypatch.setattr(spatial_verification, "_GROUP_PAIRS", 1)  # one photo and side each
    assert verify(q, photos) == whole
    assert [r is not None and r.verified for r in whole] == [True, True, True, False]


def test_compact_descriptors_are_compared_in_fewer_dimensions_with_exact_similarities(
        query: QueryFeatures) -> None:
    from imagesearch.core.spatial_verification import (
        MATCH_DIMS,
        match_candidates,
        matching_projection,
    )

    axes = matching_projection("rq5")
    assert axes is not None and axes.shape == (128, MATCH_DIMS["rq5"])
    assert np.allclose(axes.T @ axes, np.eye(axes.shape[1]), atol=1e-5)  # orthonormal
    assert matching_projection("pq16") is None and matching_projection(None) is None
    photo = stored(scene(OBJECT, similarity(0.5, 30, 400, 300, CENTRE), (800, 600))[0])
    # Most of a RootSIFT descriptor lies in the strongest axes.
    kept = np.linalg.norm(photo.descriptors @ axes, axis=1)
    assert np.median(kept) > 0.95
    projected = QueryFeatures(query.plain, "rq5")
    ((qi, di, sim), _), = match_candidates(projected, [photo])
    ((full_qi, full_di, _), _), = match_candidates(QueryFeatures(query.plain), [photo])
    assert len(qi) > 20
    # The similarities carried on are exact dot products, not their projections.
    assert np.allclose(sim, (query.plain.descriptors[qi] * photo.descriptors[di]).sum(axis=1),
                       atol=1e-5)
    # And the projection finds nearly the same correspondences.
    found = set(zip(qi.tolist(), di.tolist(), strict=True))
    full = set(zip(full_qi.tolist(), full_di.tolist(), strict=True))
    assert len(found & full) >= 0.8 * len(full)
