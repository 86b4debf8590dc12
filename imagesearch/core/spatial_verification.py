"""Spatial verification: does the query's object sit in this photo, and where?

Tentative correspondences come from descriptor matching (each photo keypoint's nearest
query keypoint, kept when clearly nearer than the second: Lowe's ratio test). Every
correspondence carries a position, scale and angle on both sides, so a single one already
proposes a similarity transform (the idea of Philbin et al.'s fast spatial matching), and
each correspondence's own scale and turn must agree with it: all proposals are scored at
once with NumPy, the best is refined to an affine map by least
squares on its inliers (local optimisation), and, with enough support, to a homography
with OpenCV's MAGSAC++, whose projection of the query frame gives the box (where the
refinement gives up, a least-squares similarity on the inliers projects it instead).

Mirrored photos are matched with the query's mirrored keypoints, computed by permuting
descriptors rather than extracting twice (core/local_features.mirrored).

Compact descriptors are compared in RootSIFT's strongest principal axes (MATCH_DIMS;
core/data, learned by tools/train_feature_codebooks.py on photos the instance benchmark does
not use): 48 of 128 dimensions keep 97% of its energy, and the matrix product that
dominates the cost shrinks with them. A kept correspondence's similarity is exact.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagesearch.core.local_features import LocalFeatures, mirrored
from imagesearch.errors import InstallationError

RATIO = 0.85  # Lowe's ratio test on RootSIFT distances (compact: in MATCH_DIMS)
MIN_INLIERS = 3  # fewer than this is no verified match
# A match of exactly MIN_INLIERS verifies only when its correspondences also look alike (mean
# RootSIFT similarity, as stored and reconstructed), and only for the compact codec: three
# fall into place by chance now and then, and chance ones are less alike there. In a trial
# on the instance benchmark (150 other photos a query, compact) three-inlier matches of true
# positives had a mean similarity of 0.927 or more in three cases of four, those of other
# photos 0.915 or less in three of four; with the rule, `eval` verified 5 more of the 173
# positives in the app's compact search and 3 more other photos. The finer detailed codes
# (pq16) make chance correspondences look alike too: there the rule verified 1 more
# positive and 40 more other photos, so a detailed match needs four inliers.
FEW_INLIERS_SIMILARITY = {"rq5": 0.92}  # by codec (core/feature_codec.CODECS)
HYPOTHESES = 96  # proposals scored per photo: the most distinctive correspondences
HYPOTHESIS_TOL = 0.035  # reprojection tolerance, as a share of the photo's longer side
REFINED_TOL = 0.02
AFFINE_INLIERS = 8  # fewer inliers than this are fitted by a similarity, not an affine map
# A correspondence's own turn (photo keypoint's angle minus the query's) may differ from the
# model's by this much (radians, ~34 degrees). Without it a proposal collected inliers that
# sat in the right places by chance but were turned every which way: on the instance
# benchmark, verifying every photo (`eval --stages sp-all`) let 95 other photos into the
# queries' top 100 as verified matches, 11 with it, and mAP@100 went from 73.4 to 74.3.
MAX_TURN = 0.6
MAX_LOG_SCALE = 0.8  # a correspondence's scale may disagree with the model's by ~2.2x
# Photo keypoints matched per matrix product: its similarities (~12 MB with a large query)
# stay in cache for the passes that find each row's nearest two. With 8,192, the whole
# re-rank of 250 photos took 1.21x as long (bench/verification_speed.py, AVX2 EPYC).
_CHUNK_ROWS = 1024
PROJECTION_FILE = Path(__file__).with_name("data") / "rootsift_projection.npy"
PROJECTION_AXES = 64  # principal axes the file holds, strongest first
# Dimensions descriptors are compared in, by codec (core/feature_codec.CODECS); a codec not
# named here is compared in all 128. On the instance benchmark (`eval --stages sp`,
# compact library, 300 candidates) the compact codes matched as well or better in fewer
# dimensions: mAP@100 75.9 in 128, 76.1 in 64, 76.5 in 48, 76.3 in 32, while the matrix
# product's cost fell to 0.84x of 64's at 48. Their five bytes reconstruct the finer
# dimensions little better than noise. The detailed codes (pq16) keep that detail and lost
# by it (89.6 in 128, 89.3 in 64, 88.6 in 48), so they are compared in full.
MATCH_DIMS = {"rq5": 48}
_GROUP_PAIRS = 200_000  # proposal-correspondence pairs scored at once (~25 MB)


@functools.cache
def _axes() -> np.ndarray:
    try:
        axes = np.load(PROJECTION_FILE)
    except (OSError, ValueError) as exc:
        raise InstallationError(f"{PROJECTION_FILE} is missing or damaged ({exc}); "
                                "reinstall imagesearch") from exc
    if axes.shape != (128, PROJECTION_AXES) or not np.all(np.isfinite(axes)):
        raise InstallationError(f"{PROJECTION_FILE} is not a 128 x {PROJECTION_AXES} "
                                "projection; reinstall imagesearch")
    return np.ascontiguousarray(axes, dtype=np.float32)


def matching_projection(codec: str | None) -> np.ndarray | None:
    """128 x MATCH_DIMS[codec]: RootSIFT's strongest principal axes; None: compare in full.

    Raises:
        InstallationError: the projection file that ships with the app is damaged.
    """
    dims = MATCH_DIMS.get(codec or "")
    return None if dims is None else np.ascontiguousarray(_axes()[:, :dims])


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome for one photo."""

    inliers: int  # distinct query keypoints consistent with the best geometry
    box: tuple[float, float, float, float] | None  # x0, y0, x1, y1 in the photo's pixels
    mirrored: bool = False
    matches: int = 0  # tentative correspondences before geometry
    alike: bool = True  # False: too few inliers whose descriptors are too little alike

    @property
    def verified(self) -> bool:
        return self.inliers >= MIN_INLIERS and self.alike


NOT_VERIFIED = Verification(0, None)


class QueryFeatures:
    """A query's keypoints as they are and mirrored, ready to match against many photos."""

    def __init__(self, features: LocalFeatures, codec: str | None = None) -> None:
        """``codec``: the photos' (MATCH_DIMS); None compares descriptors in full."""
        self.plain = features
        self.mirror = mirrored(features)
        self.n = len(features)
        self.projection = matching_projection(codec)
        # Both orientations' rows as they are (exact similarities), and as the columns of
        # one matrix product, projected when the codec is compared in fewer dimensions.
        self.both = np.ascontiguousarray(
            np.concatenate([self.plain.descriptors, self.mirror.descriptors]))
        self.columns = np.ascontiguousarray(
            (self.both if self.projection is None else self.both @ self.projection).T)


def _nearest_two(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row and side: index of the best column, best and second-best similarity.

    ``sims`` is rows x sides x columns. Two passes of argmax/max beat argpartition by an
    order of magnitude; ``sims`` is scratch: each best entry is overwritten.
    """
    best = sims.argmax(axis=2)
    s1 = np.take_along_axis(sims, best[..., None], axis=2)[..., 0]
    if sims.shape[2] == 1:
        return best, s1, np.full_like(s1, -1.0)
    np.put_along_axis(sims, best[..., None], -2.0, axis=2)
    return best, s1, sims.max(axis=2)


def _ratio_keep(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    # Unit vectors: distance = sqrt(2 - 2 cos).
    d1 = np.sqrt(np.maximum(2.0 - 2.0 * s1, 0.0))
    d2 = np.sqrt(np.maximum(2.0 - 2.0 * s2, 0.0))
    return d1 < RATIO * d2


def match_candidates(query: QueryFeatures, photos: Sequence[LocalFeatures]
                     ) -> list[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]]:
    """Tentative correspondences of each photo with the plain and the mirrored query.

    Returns, per photo, ((query idx, photo idx, similarity) plain, (...) mirrored).
    """
    out: list[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]] = []
    empty = (np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0, np.float32))
    if query.n < 2:
        return [(empty, empty) for _ in photos]
    start = 0
    while start < len(photos):
        # A chunk of photos whose keypoints fit one bounded matrix product.
        stop, rows = start, 0
        while stop < len(photos) and (rows == 0 or rows + len(photos[stop]) <= _CHUNK_ROWS):
            rows += len(photos[stop])
            stop += 1
        chunk = photos[start:stop]
        descriptors = [p.descriptors for p in chunk if len(p)]
        if not descriptors:
            out.extend((empty, empty) for _ in chunk)
            start = stop
            continue
        # Every keypoint of the chunk against both orientations of the query at once.
        rows_all = np.concatenate(descriptors)
        projected = rows_all if query.projection is None else rows_all @ query.projection
        sims = (projected @ query.columns).reshape(-1, 2, query.n)
        best, s1, s2 = _nearest_two(sims)
        keep = _ratio_keep(s1, s2)
        exact = s1
        if query.projection is not None:
            # Each kept correspondence's exact similarity: hypotheses are tried in its
            # order, and three inliers verify by it.
            row, side = np.nonzero(keep)
            exact = np.zeros(keep.shape, np.float32)
            exact[row, side] = np.einsum("rk,rk->r", rows_all[row],
                                         query.both[best[row, side] + side * query.n])
        offset = 0
        for p in chunk:
            rows_p = slice(offset, offset + len(p))
            offset += len(p)
            sides = []
            for s in (0, 1):
                k = keep[rows_p, s]
                sides.append((best[rows_p, s][k], np.nonzero(k)[0], exact[rows_p, s][k]))
            out.append((sides[0], sides[1]))
        start = stop
    return out


def _best_similarities(pairs: Sequence[tuple[LocalFeatures, LocalFeatures, np.ndarray,
                                              np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Inlier mask of the best single-correspondence similarity proposal, for each of many
    (query, photo, query idx, photo idx, similarity).

    Each photo's HYPOTHESES most alike correspondences propose; the one with the most
    inliers wins, the most alike on a tie. A re-rank scores hundreds of photos, most with a
    few dozen correspondences, where one photo's NumPy calls took longer than their work:
    here every photo's proposals meet its own correspondences in one set of array
    operations: 0.4x the time of one photo at a time, and on the instance benchmark's
    queries the same masks. A photo without correspondences gets an empty mask.
    """
    if any(len(qi) == 0 for _, _, qi, _, _ in pairs):
        scored = iter(_best_similarities([p for p in pairs if len(p[2])]))
        return [np.zeros(0, bool) if len(p[2]) == 0 else next(scored) for p in pairs]
    if not pairs:
        return []
    sizes = np.array([len(qi) for _, _, qi, _, _ in pairs], np.intp)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    segment = np.repeat(np.arange(len(pairs)), sizes)
    qp = np.concatenate([q.xy[qi] for q, _, qi, _, _ in pairs]).astype(np.float64)
    dp = np.concatenate([d.xy[di] for _, d, _, di, _ in pairs]).astype(np.float64)
    ratio = np.concatenate([d.scale[di] / np.maximum(q.scale[qi], 1e-6)
                            for q, d, qi, di, _ in pairs]).astype(np.float64)
    theta = np.radians(np.concatenate([d.angle[di] - q.angle[qi]
                                       for q, d, qi, di, _ in pairs]).astype(np.float64))
    tol = np.array([HYPOTHESIS_TOL * float(max(d.width, d.height)) for _, d, _, _, _ in pairs])
    sim = np.concatenate([sim for _, _, _, _, sim in pairs])
    # Each photo's proposals: its most distinctive correspondences, ties in their order.
    ranked = np.lexsort((np.arange(len(sim)), -sim, segment))
    per = np.minimum(sizes, HYPOTHESES)
    rank_in = np.arange(len(sim)) - np.repeat(starts, sizes)
    hyp = ranked[rank_in < np.repeat(per, sizes)]  # grouped by photo, best first
    hyp_segment = segment[hyp]
    # Every proposal against every correspondence of its own photo.
    span = sizes[hyp_segment]
    first = np.concatenate([[0], np.cumsum(span)[:-1]])
    h = np.repeat(np.arange(len(hyp)), span)
    c = np.arange(int(span.sum())) - np.repeat(first, span) + np.repeat(starts[hyp_segment],
                                                                         span)
    j = hyp[h]
    cos = np.cos(theta[j]) * ratio[j]
    sin = np.sin(theta[j]) * ratio[j]
    dx = qp[c, 0] - qp[j, 0]
    dy = qp[c, 1] - qp[j, 1]
    px = cos * dx - sin * dy + dp[j, 0]
    py = sin * dx + cos * dy + dp[j, 1]
    err = np.hypot(px - dp[c, 0], py - dp[c, 1])
    log_scale = np.abs(np.log(ratio[c] / ratio[j]))
    turn = np.abs(np.remainder(theta[c] - theta[j] + np.pi, 2 * np.pi) - np.pi)
    inliers = (err < tol[segment[c]]) & (log_scale < MAX_LOG_SCALE) & (turn < MAX_TURN)
    counts = np.add.reduceat(inliers, first)
    # Each photo's first proposal with the most inliers, as argmax picks it.
    hyp_starts = np.concatenate([[0], np.cumsum(per)[:-1]])
    most = np.maximum.reduceat(counts, hyp_starts)
    winners = np.flatnonzero(counts == most[hyp_segment])
    _, first_winner = np.unique(hyp_segment[winners], return_index=True)
    best = winners[first_winner]
    return [inliers[first[b]:first[b] + sizes[k]] for k, b in enumerate(best.tolist())]


def _distinct(qi: np.ndarray, di: np.ndarray, mask: np.ndarray) -> int:
    """Inliers counted once per query keypoint and once per photo keypoint."""
    return min(len(np.unique(qi[mask])), len(np.unique(di[mask])))


def _refine(q: LocalFeatures, d: LocalFeatures, qi: np.ndarray, di: np.ndarray,
            mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Local optimisation: least squares on the inliers (a similarity while they are few, then
    an affine map), then a homography."""
    import cv2

    side = float(max(d.width, d.height))
    src, dst = q.xy[qi].astype(np.float32), d.xy[di].astype(np.float32)
    transform: np.ndarray | None = None
    for _ in range(2):
        if mask.sum() < 3:
            break
        # An affine map has 6 unknowns: from a handful of inliers it bends to fit their
        # noise (squashed boxes); below AFFINE_INLIERS a similarity (4) is fitted instead.
        fit = cv2.estimateAffine2D if mask.sum() >= AFFINE_INLIERS else \
            cv2.estimateAffinePartial2D
        affine, _ = fit(src[mask], dst[mask], method=cv2.LMEDS)
        if affine is None or not np.all(np.isfinite(affine)):
            break
        projected = src @ affine[:, :2].T + affine[:, 2]
        refined = np.hypot(*(projected - dst).T) < REFINED_TOL * side
        if refined.sum() < mask.sum():
            break
        mask = refined
        transform = np.vstack([affine, [0.0, 0.0, 1.0]])
    if mask.sum() >= 8:
        homography, _ = cv2.findHomography(src[mask], dst[mask], cv2.USAC_MAGSAC,
                                             REFINED_TOL * side)
        if homography is not None and _plausible(homography, q):
            transform = homography
    if transform is None and mask.sum() >= 2:
        # The fit above lost an inlier (a few noisy ones): the box still comes from the
        # geometry of all of them, not from their hull, which covers only the matched part.
        # On the instance benchmark this turned 4 of the 5 verified top-10 boxes with
        # IoU < 0.5 into good ones.
        transform = _least_squares_similarity(src[mask], dst[mask])
    if transform is not None and not _scale_agrees(transform, q, d, qi[mask], di[mask]):
        # Inliers bunched in a few pixels let noise set the fitted scale: a frame blown
        # up far beyond what the keypoints' own sizes say is no box (their hull is used).
        transform = None
    return mask, transform


def _scale_agrees(transform: np.ndarray, q: LocalFeatures, d: LocalFeatures,
                  qi: np.ndarray, di: np.ndarray) -> bool:
    """Whether a similarity or affine map scales as the inliers' keypoints do (within the
    tolerance of the hypotheses); a homography's perspective is judged by _plausible."""
    if abs(transform[2, 0]) + abs(transform[2, 1]) > 1e-12:
        return True
    area = abs(float(np.linalg.det(transform[:2, :2])))
    ratio = float(np.median(d.scale[di] / np.maximum(q.scale[qi], 1e-6)))
    if area <= 0 or ratio <= 0:
        return False
    return bool(abs(np.log(np.sqrt(area) / ratio)) < MAX_LOG_SCALE)


def _least_squares_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """The similarity (scale, rotation, shift) that maps ``src`` closest to ``dst`` in
    least squares (closed form, Umeyama without reflection); None when degenerate."""
    s0, d0 = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - s0, dst - d0
    norm = float((s * s).sum())
    if norm < 1e-9:
        return None
    a = float((s * d).sum()) / norm
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / norm
    if a * a + b * b < 1e-12:
        return None
    rotate = np.array([[a, -b], [b, a]])
    shift = d0 - rotate @ s0
    return np.array([[a, -b, shift[0]], [b, a, shift[1]], [0.0, 0.0, 1.0]])


def _plausible(h: np.ndarray, q: LocalFeatures) -> bool:
    """Rejects degenerate homographies (folded or wildly shrunk frames)."""
    corners = _frame(q)
    projected = _project(h, corners)
    if projected is None:
        return False
    area = 0.5 * abs(float(np.dot(projected[:, 0], np.roll(projected[:, 1], 1))
                           - np.dot(projected[:, 1], np.roll(projected[:, 0], 1))))
    edge = np.roll(projected, -1, axis=0) - projected
    turn = np.roll(edge, -1, axis=0)
    cross = edge[:, 0] * turn[:, 1] - edge[:, 1] * turn[:, 0]
    convex = bool(np.all(cross > 0) or np.all(cross < 0))
    return convex and area > 1.0


def _frame(q: LocalFeatures) -> np.ndarray:
    w, h = float(q.width), float(q.height)
    return np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)


def _project(h: np.ndarray, points: np.ndarray) -> np.ndarray | None:
    homogeneous = np.hstack([points, np.ones((len(points), 1))]) @ h.T
    if np.any(homogeneous[:, 2] <= 1e-9):
        return None  # a corner behind the camera: not a real view of the frame
    return np.asarray(homogeneous[:, :2] / homogeneous[:, 2:3])


def box_from_transform(q: LocalFeatures, d: LocalFeatures, transform: np.ndarray
                       ) -> tuple[float, float, float, float] | None:
    """The query frame projected into the photo, as a clipped axis-aligned box."""
    projected = _project(transform, _frame(q))
    if projected is None:
        return None
    x0, y0 = np.clip(projected.min(axis=0), 0, [d.width, d.height])
    x1, y1 = np.clip(projected.max(axis=0), 0, [d.width, d.height])
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return float(x0), float(y0), float(x1), float(y1)


def box_from_inliers(d: LocalFeatures, di: np.ndarray) -> tuple[float, float, float, float]:
    """The inliers' bounding box, widened by each keypoint's radius."""
    pts, radius = d.xy[di], d.scale[di] / 2
    x0 = float(np.clip((pts[:, 0] - radius).min(), 0, d.width))
    y0 = float(np.clip((pts[:, 1] - radius).min(), 0, d.height))
    x1 = float(np.clip((pts[:, 0] + radius).max(), 0, d.width))
    y1 = float(np.clip((pts[:, 1] + radius).max(), 0, d.height))
    return x0, y0, x1, y1


def verify_pair(q: LocalFeatures, d: LocalFeatures, qi: np.ndarray, di: np.ndarray,
                sim: np.ndarray, box_method: str = "frame", few_alike: float | None = None,
                proposed: np.ndarray | None = None) -> Verification:
    """Best geometry for one orientation's correspondences.

    Args:
        few_alike: the mean similarity at which MIN_INLIERS inliers verify (see
            FEW_INLIERS_SIMILARITY); None: one more inlier is needed.
        proposed: the best proposal's inlier mask when already found (_best_similarities).
    """
    if len(qi) < MIN_INLIERS:
        return Verification(0, None, matches=len(qi))
    mask = proposed if proposed is not None else _best_similarities([(q, d, qi, di, sim)])[0]
    if _distinct(qi, di, mask) < MIN_INLIERS:
        return Verification(_distinct(qi, di, mask), None, matches=len(qi))
    mask, transform = _refine(q, d, qi, di, mask)
    inliers = _distinct(qi, di, mask)
    if inliers == MIN_INLIERS and (few_alike is None or float(np.mean(sim[mask])) < few_alike):
        return Verification(inliers, None, matches=len(qi), alike=False)
    box = None
    if inliers >= MIN_INLIERS:
        if box_method == "frame" and transform is not None:
            box = box_from_transform(q, d, transform)
        if box is None:
            box = box_from_inliers(d, di[mask])
    return Verification(inliers, box, matches=len(qi))


def _groups(sizes: Sequence[int]) -> list[list[int]]:
    """Indices of the non-zero ``sizes`` (correspondences), in groups whose proposal-
    correspondence pairs reach _GROUP_PAIRS at most by their last member."""
    groups: list[list[int]] = [[]]
    pairs = 0
    for k, n in enumerate(sizes):
        if n == 0:
            continue
        if pairs >= _GROUP_PAIRS:
            groups.append([])
            pairs = 0
        groups[-1].append(k)
        pairs += min(n, HYPOTHESES) * n
    return [g for g in groups if g]


def verify(query: QueryFeatures, photos: Sequence[LocalFeatures],
           cancel: threading.Event | None = None, box_method: str = "frame",
           few_alike: float | None = None) -> list[Verification | None]:
    """Verify each photo against the query; None for photos left when cancelled.

    ``few_alike``: see verify_pair (FEW_INLIERS_SIMILARITY for the photos' codec).
    """
    matched = match_candidates(query, photos)
    # The best proposal of every photo and side with enough correspondences, at once.
    sides = [(q, photo, *found) for photo, both in zip(photos, matched, strict=True)
             for q, found in zip((query.plain, query.mirror), both, strict=True)]
    proposed: list[np.ndarray | None] = [None] * len(sides)
    for group in _groups([len(qi) if len(qi) >= MIN_INLIERS else 0
                          for _, _, qi, _, _ in sides]):
        for j, mask in zip(group, _best_similarities([sides[j] for j in group]), strict=True):
            proposed[j] = mask
    out: list[Verification | None] = []
    for i, (photo, (plain, mirror)) in enumerate(zip(photos, matched, strict=True)):
        if cancel is not None and cancel.is_set():
            out.append(None)
            continue
        a = verify_pair(query.plain, photo, *plain, box_method, few_alike, proposed[2 * i])
        b = verify_pair(query.mirror, photo, *mirror, box_method, few_alike,
                        proposed[2 * i + 1])
        best = a if (a.verified, a.inliers) >= (b.verified, b.inliers) else \
            Verification(b.inliers, b.box, True, b.matches, b.alike)
        out.append(best)
    return out
