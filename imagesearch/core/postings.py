"""ASMK postings grouped by visual word, in flat arrays: packing, merging and scoring.

A posting is one photo's aggregated signature for one word: the photo's row (32 bits)
and 128 sign bits (two 64-bit words), 20 bytes. At a million photos of 225 keypoints an
index holds about 220 million of them, so they live in flat arrays sorted by word, which
a base file can memory-map (core/local_index_file.py), never as an object per photo.

Words are scored with idf weights and photos normalised by their self-similarity, both
fixed when postings are packed or merged: ``merge`` folds the live rows of one set and
all of another into a new set, word range by word range, into arrays its caller
provides (memory or a file being written), so its memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 3.0  # selectivity of the kernel
VERSION_BYTES = 32  # a photo's version (its content hash, 32 hex digits) as stored
_CHUNK = 1 << 22  # postings handled at once by merging and scoring: bounds their memory
_GROUP = 1 << 16  # postings a query's words are scored against at once: the CPU's caches

# Where ``merge`` puts its output: (name, shape, dtype) -> a writable array.
Allocate = Callable[[str, tuple[int, ...], np.dtype], np.ndarray]


@dataclass(frozen=True, slots=True)
class Postings:
    """Photos' signatures grouped by word. Arrays may be read-only memory maps."""

    ids: np.ndarray  # n int64, ascending
    versions: np.ndarray  # n |S32: what each photo's signatures were made from
    counts: np.ndarray  # n uint32: a photo's postings (its distinct words)
    offsets: np.ndarray  # k + 1 int64: word w's postings are [offsets[w], offsets[w + 1])
    rows: np.ndarray  # P uint32: each posting's photo, a row of ``ids``
    codes: np.ndarray  # P x 2 uint64: each posting's 128 sign bits
    norms: np.ndarray  # n float32: each photo's self-similarity, square-rooted, under idf
    idf: np.ndarray  # k float32: the word weights the norms were computed with

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def k(self) -> int:
        return len(self.offsets) - 1

    def row_of(self, photo_ids: np.ndarray) -> np.ndarray:
        """Rows of ``photo_ids`` (-1 where absent)."""
        photo_ids = np.asarray(photo_ids, dtype=np.int64)
        at = np.searchsorted(self.ids, photo_ids)
        found = at < self.n
        found[found] = np.asarray(self.ids)[at[found]] == photo_ids[found]
        return np.where(found, at, -1)


def empty(k: int) -> Postings:
    return Postings(np.zeros(0, np.int64), np.zeros(0, f"S{VERSION_BYTES}"),
                    np.zeros(0, np.uint32), np.zeros(k + 1, np.int64),
                    np.zeros(0, np.uint32), np.zeros((0, 2), np.uint64),
                    np.zeros(0, np.float32), np.zeros(k, np.float32))


def encode_version(version: str) -> bytes:
    return version.encode("utf-8")[:VERSION_BYTES]


def pack(photos: Sequence[tuple[int, np.ndarray, np.ndarray, bytes]], k: int,
         idf: np.ndarray) -> Postings:
    """Postings of (photo id, distinct words, their codes, version) with distinct ids,
    normalised under ``idf``."""
    photos = sorted(photos, key=lambda p: p[0])
    n = len(photos)
    ids = np.fromiter((p[0] for p in photos), np.int64, n)
    versions = np.array([p[3] for p in photos], dtype=f"S{VERSION_BYTES}")
    counts = np.fromiter((len(p[1]) for p in photos), np.uint32, n)
    words = (np.concatenate([p[1] for p in photos]).astype(np.int64) if n
             else np.zeros(0, np.int64))
    codes = np.concatenate([p[2] for p in photos]) if n else np.zeros((0, 2), np.uint64)
    rows = np.repeat(np.arange(n, dtype=np.uint32), counts)
    order = np.argsort(words, kind="stable")
    words = words[order]
    offsets = np.searchsorted(words, np.arange(k + 1)).astype(np.int64)
    idf = np.asarray(idf, np.float32)
    norms = _norms(rows[order], idf[words], n)
    return Postings(ids, versions, counts, offsets, rows[order],
                    np.ascontiguousarray(codes[order]), norms, idf)


def _norms(rows: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    square = np.bincount(rows, weights=weights.astype(np.float64) ** 2, minlength=n)[:n]
    return np.sqrt(np.maximum(square, 1e-9)).astype(np.float32)


def idf_for(df: np.ndarray, photos: int) -> np.ndarray:
    """Inverse document frequency of each word among ``photos`` photos."""
    return np.log((photos + 1.0) / (df + 1.0)).astype(np.float32)


def _word_ranges(offsets: np.ndarray, limit: int = _CHUNK) -> Iterator[tuple[int, int]]:
    """Consecutive word ranges [w0, w1) holding about ``limit`` postings each (at least
    one word each)."""
    k = len(offsets) - 1
    w0 = 0
    while w0 < k:
        w1 = int(np.searchsorted(offsets, offsets[w0] + limit, side="right")) - 1
        w1 = min(k, max(w1, w0 + 1))
        yield w0, w1
        w0 = w1


@dataclass(frozen=True, slots=True)
class MergePlan:
    """What merging will make, known before any posting is copied: enough to lay out
    the output's file."""

    ids: np.ndarray
    versions: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray
    idf: np.ndarray
    base_map: np.ndarray  # a base row's new row, -1 if it is dropped
    extra_map: np.ndarray  # an extra row's new row
    base_live_df: np.ndarray  # per word: the base's live postings

    @property
    def size(self) -> int:
        return int(self.offsets[-1])


def plan_merge(base: Postings, live: np.ndarray, extra: Postings) -> MergePlan:
    """Plan the merge of ``base``'s ``live`` rows and every row of ``extra`` (their ids
    distinct): one pass over the base's rows to count its live postings by word."""
    k = base.k
    live = np.asarray(live, dtype=bool)
    live_df = np.zeros(k, np.int64)
    base_offsets = np.asarray(base.offsets)
    for w0, w1 in _word_ranges(base_offsets):
        a, b = int(base_offsets[w0]), int(base_offsets[w1])
        running = np.concatenate([[0], np.cumsum(_flags(live, base.rows[a:b]))])
        live_df[w0:w1] = running[base_offsets[w0 + 1:w1 + 1] - a] \
            - running[base_offsets[w0:w1] - a]
    df = live_df + np.diff(np.asarray(extra.offsets))
    live_rows = np.flatnonzero(live)
    joined = np.concatenate([np.asarray(base.ids)[live_rows], np.asarray(extra.ids)])
    order = np.argsort(joined, kind="stable")
    new_row = np.empty(len(joined), np.int64)
    new_row[order] = np.arange(len(joined))
    base_map = np.full(base.n, -1, np.int64)
    base_map[live_rows] = new_row[:len(live_rows)]
    versions = np.concatenate([np.asarray(base.versions)[live_rows],
                               np.asarray(extra.versions)])[order]
    counts = np.concatenate([np.asarray(base.counts)[live_rows],
                             np.asarray(extra.counts)])[order]
    return MergePlan(joined[order], versions.astype(f"S{VERSION_BYTES}"),
                     counts.astype(np.uint32), np.concatenate([[0], np.cumsum(df)]),
                     idf_for(df, len(joined)), base_map, new_row[len(live_rows):],
                     live_df)


def _flags(by_row: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``by_row`` at each of ``rows``; False for a row outside it (a damaged posting)."""
    rows = np.asarray(rows)
    out = np.zeros(len(rows), bool)
    inside = rows < len(by_row)
    out[inside] = by_row[rows[inside]]
    return out


def merge(base: Postings, extra: Postings, plan: MergePlan, allocate: Allocate) -> Postings:
    """Carry out ``plan``: within a word, the base's postings first, then the extra's."""
    n = len(plan.ids)
    rows_out = allocate("rows", (plan.size,), np.dtype(np.uint32))
    codes_out = allocate("codes", (plan.size, 2), np.dtype(np.uint64))
    square = np.zeros(n, np.float64)
    base_offsets, extra_offsets = np.asarray(base.offsets), np.asarray(extra.offsets)
    for w0, w1 in _word_ranges(plan.offsets):
        o0, o1 = int(plan.offsets[w0]), int(plan.offsets[w1])
        rows = np.empty(o1 - o0, np.int64)
        codes = np.empty((o1 - o0, 2), np.uint64)
        # Base postings: the live ones keep their order, at the start of their word.
        a, b = int(base_offsets[w0]), int(base_offsets[w1])
        rows_in = np.asarray(base.rows[a:b])
        keep = _flags(plan.base_map >= 0, rows_in)
        mapped = np.where(keep, plan.base_map[np.minimum(rows_in, max(base.n - 1, 0))], -1)
        words = np.repeat(np.arange(w0, w1), np.diff(base_offsets[w0:w1 + 1]))[keep]
        first = np.concatenate([[0], np.cumsum(plan.base_live_df[w0:w1])])[:-1]
        rank = np.arange(len(words)) - first[words - w0]
        at = plan.offsets[words] - o0 + rank
        rows[at] = mapped[keep]
        codes[at] = np.asarray(base.codes[a:b])[keep]
        # Extra postings follow them.
        c, d = int(extra_offsets[w0]), int(extra_offsets[w1])
        words = np.repeat(np.arange(w0, w1), np.diff(extra_offsets[w0:w1 + 1]))
        rank = np.arange(c, d) - extra_offsets[words]
        at = plan.offsets[words] - o0 + plan.base_live_df[words] + rank
        rows[at] = plan.extra_map[np.asarray(extra.rows[c:d])]
        codes[at] = np.asarray(extra.codes[c:d])
        rows_out[o0:o1] = rows
        codes_out[o0:o1] = codes
        weight = plan.idf[np.repeat(np.arange(w0, w1), np.diff(plan.offsets[w0:w1 + 1]))]
        square += np.bincount(rows, weights=weight.astype(np.float64) ** 2, minlength=n)
    norms = np.sqrt(np.maximum(square, 1e-9)).astype(np.float32)
    return Postings(plan.ids, plan.versions, plan.counts, plan.offsets.astype(np.int64),
                    rows_out, codes_out, norms, plan.idf)


# sigma_alpha(u) for every Hamming distance h of two 128-bit codes, u = 1 - 2h/128.
_SIMILARITY = np.where(np.arange(129) < 64, (1.0 - np.arange(129) / 64.0) ** ALPHA,
                       0.0).astype(np.float32)


def kernel(codes_a: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
    """sigma_alpha of the normalised Hamming similarity, element by element."""
    hamming = np.bitwise_count(codes_a[:, 0] ^ codes_b[:, 0])
    hamming += np.bitwise_count(codes_a[:, 1] ^ codes_b[:, 1])
    similarity: np.ndarray = _SIMILARITY[hamming]
    return similarity


def score(words: np.ndarray, codes: np.ndarray, postings: Postings, idf: np.ndarray,
          live: np.ndarray | None = None) -> np.ndarray:
    """Each photo's ASMK similarity to a query's (distinct ``words``, their ``codes``),
    divided by the photo's norm (not yet by the query's); 0 for rows not ``live``.

    Query words are taken a small group at a time, so that a group's postings and the
    arrays derived from them stay in the CPU's caches (4x faster than groups of millions
    on the CPU measured, bench/asmk_scale.py); their similarities are gathered into
    buffers of up to _CHUNK postings and added to the photos' scores a buffer at a time,
    so a large library's score array is not swept once per group.
    """
    n = postings.n
    scores = np.zeros(n + 1, np.float64)  # the last bin: rows beyond the photos (damage)
    if n == 0 or len(words) == 0:
        return scores[:n].astype(np.float32)
    offsets = np.asarray(postings.offsets)
    starts, ends = offsets[words], offsets[words + 1]
    lengths = ends - starts
    weight = idf[words] ** 2  # float32, as the scores were always computed
    # Plain views of memory maps: slicing a np.memmap makes a memmap, several times the
    # cost of slicing an array, and a query slices thousands.
    all_codes, all_rows = np.asarray(postings.codes), np.asarray(postings.rows)
    group_end = np.cumsum(lengths)
    capacity = int(min(group_end[-1], _CHUNK))
    buffer_rows = np.empty(max(capacity, 1), np.uint32)
    buffer_sims = np.empty(max(capacity, 1), np.float64)
    filled = 0

    def flush() -> None:
        nonlocal filled
        np.minimum(buffer_rows[:filled], n, out=buffer_rows[:filled])
        scores[:] += np.bincount(buffer_rows[:filled], weights=buffer_sims[:filled],
                                 minlength=n + 1)
        filled = 0

    first = 0
    while first < len(words):
        last = int(np.searchsorted(group_end, group_end[first] - lengths[first] + _GROUP,
                                   side="right"))
        last = max(last, first + 1)
        length = lengths[first:last]
        total = int(group_end[last - 1] - group_end[first] + lengths[first])
        if total:
            spans = list(zip(starts[first:last].tolist(), ends[first:last].tolist(),
                             strict=True))
            found = np.concatenate([all_codes[a:b] for a, b in spans])
            np.bitwise_xor(found, np.repeat(codes[first:last], length, axis=0), out=found)
            bits = np.bitwise_count(found)
            sims = _SIMILARITY[bits[:, 0] + bits[:, 1]] * np.repeat(weight[first:last], length)
            rows = np.concatenate([all_rows[a:b] for a, b in spans])
            if filled + total > capacity:
                flush()
            if total > capacity:  # one word longer than a buffer: added at once
                np.minimum(rows, n, out=rows)
                scores[:] += np.bincount(rows, weights=sims, minlength=n + 1)
            else:
                buffer_rows[filled:filled + total] = rows
                buffer_sims[filled:filled + total] = sims
                filled += total
        first = last
    if filled:
        flush()
    result: np.ndarray = (scores[:n] / np.asarray(postings.norms)).astype(np.float32)
    if live is not None:
        result[~live] = 0.0
    return result
