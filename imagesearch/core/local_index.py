"""A shortlist from local features alone: a visual vocabulary and an ASMK inverted file.

ASMK* (Tolias, Avrithis & Jegou, "To aggregate or not to aggregate", ICCV 2013): the
library's descriptors are quantised to a vocabulary learned from the library itself
(FAISS k-means). Per photo and visual word, the residuals to the word's centre are summed
and binarised to 128 bits. Two photos are compared word by word, through a selective
kernel that keeps only confident agreements (sigma(u) = u^3 for u > 0, u = 1 - 2h/128 for
Hamming distance h), weighted by inverse document frequency and normalised by each photo's
self-similarity, so a photo with a thousand textured words does not win by sheer count.

This needs no model weights, so "find this object" works on a fresh install, offline.
The index is derived data: it is rebuilt from the catalog's stored features whenever in
doubt, and its file is only a cache.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagesearch.core import postings
from imagesearch.core.clustering import coarse_count, kmeans, nearest, shares
from imagesearch.core.local_features import LocalFeatures, mirrored
from imagesearch.core.local_index_file import (
    MAP_FILES,
    BaseWriter,
    JournalEntry,
    append_journal,
    journal_path,
    read_base,
    read_journal,
    read_token,
    reading,
    start_journal,
    writing,
)
from imagesearch.errors import IndexFileError

_FORMAT = 5  # 4: a vocabulary learned in two levels; 5: a base of flat postings, mapped
QUERY_ASSIGN = 3  # a query keypoint votes for its nearest few words (multiple assignment)
# Finer vocabularies match more selectively (ASMK is at its best with tens of thousands of
# words). On the instance benchmark (444,000 descriptors), 32,768 words learned in two
# levels gave the compact shortlist recall@100 79.3 and the verified ranking 72.5 mAP@100,
# against 77.3 and 70.8 with 16,384 words (means of three vocabulary seeds, measured when
# this was chosen). The ceiling bounds the vocabulary's memory (8.7 MB at 32,768 words).
MIN_WORDS, MAX_WORDS = 256, 32768
DESCRIPTORS_PER_WORD = 12
TRAIN_SAMPLE = 500_000  # descriptors k-means sees at most


def vocabulary_size(n_descriptors: int) -> int:
    """About a dozen of the library's descriptors a word, as a power of two in
    [MIN_WORDS, MAX_WORDS]."""
    k = 2 ** round(float(np.log2(max(n_descriptors, 1) / DESCRIPTORS_PER_WORD)))
    return int(np.clip(k, MIN_WORDS, MAX_WORDS))


# A vocabulary of this many words or more is learned in two levels (below, flat k-means
# is cheap): coarse cells first, then each cell's share of the words within it. For the
# instance benchmark's 444,000 descriptors and 32,768 words that took 2.9 s against 374 s
# for flat k-means, with 6% more quantisation error (bench/vocabulary.py --flat; 2% at
# 16,384 words), and ranked better (README, "Results on the instance benchmark").
TWO_LEVEL_MIN = 1024
# Beyond this many words, a descriptor's word is found through an inverted file over the
# words: a list per 64 words, a sixteenth of the lists probed but at least 8 and at most
# 16 (3.8x faster than the HNSW graph it replaced, at 16,384 words). Share of the instance
# benchmark's descriptors that get their exact nearest word, and the time a descriptor:
#   4,096 words, 8 lists probed: 99.71%, 3.8 us (a sixteenth, 4 lists: 97.45%, 3.0 us)
#   8,192 words, 8 lists: 99.24%, 4.0-4.9 us
#   16,384 words, 16 lists: 99.91%
#   32,768 words, 16 lists: 99.8%, 9.5 us (a sixteenth, 32 lists: 99.98%, 18.4 us; its
#   ASMK shortlist ranked no better: mAP@100 55.8 against 56.2, README)
APPROXIMATE_MIN = 4096
_WORDS_PER_LIST, _PROBED_SHARE, _PROBED_MIN, _PROBED_MAX = 64, 16, 8, 16
_ASSIGN_BATCH = 16_384  # descriptors given their words in one search when photos are added


def _capped_shares(counts: np.ndarray, caps: np.ndarray, total: int) -> np.ndarray:
    """``total`` split in proportion to ``counts``, no cell above its cap: what a full
    cell cannot take goes to the others, in proportion again."""
    share = np.zeros(len(counts), np.int64)
    while (left := total - int(share.sum())) > 0:
        room = caps - share
        if not (counts[room > 0] > 0).any():
            break
        share += np.minimum(shares(np.where(room > 0, counts, 0), left), room)
    return share


def _distinct_rows(rows: np.ndarray) -> np.ndarray:
    """The distinct rows of ``rows`` as float16 (how the vocabulary is kept)."""
    half = np.ascontiguousarray(rows, dtype=np.float16)
    keys = half.view(np.dtype((np.void, half.itemsize * half.shape[1]))).ravel()
    _, first = np.unique(keys, return_index=True)
    return half[np.sort(first)]


def _two_level(data: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Up to k centres: about sqrt(k) coarse cells, then k-means inside each cell, its
    number of words in proportion to the descriptors it holds (a vocabulary tree of depth
    two), but no more than its distinct descriptors: repeated ones would only give
    repeated words."""
    coarse = kmeans(data, coarse_count(k), seed)
    cell = nearest(coarse, data)
    order = np.argsort(cell, kind="stable")
    counts = np.bincount(cell, minlength=len(coarse))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    def members(c: int) -> np.ndarray:  # a cell's descriptors, copied only while needed
        return data[order[bounds[c]:bounds[c + 1]]]

    caps = np.fromiter((len(_distinct_rows(members(c))) for c in range(len(coarse))),
                       np.int64, len(coarse))
    parts: list[np.ndarray] = []
    for c, words in enumerate(_capped_shares(counts, caps, k)):
        if words == 0:
            continue
        if words >= caps[c]:  # as many words as distinct descriptors: each is its own
            parts.append(_distinct_rows(members(c)).astype(np.float32))
        elif words == 1:
            parts.append(members(c).mean(axis=0, keepdims=True))
        else:
            # A seed of its own for every cell of every run.
            parts.append(kmeans(members(c), int(words), seed * len(coarse) + c + 1))
    return np.concatenate(parts)


class Vocabulary:
    """Word centres and a fast nearest-centre search over them."""

    def __init__(self, centroids: np.ndarray, lists: np.ndarray | None = None) -> None:
        """Args:
            lists: the centres of the word lists of a large vocabulary's search, as a
                saved vocabulary kept them (learning them again costs a cold process
                about a second at 32,768 words); None: learned here.
        """
        import faiss

        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.k = len(self.centroids)
        self.lists: np.ndarray | None = None
        self._search: Any
        if self.k >= APPROXIMATE_MIN:
            count = self.k // _WORDS_PER_LIST
            if lists is None or lists.shape != (count, self.centroids.shape[1]):
                lists = kmeans(self.centroids, count, seed=0)
            self.lists = np.ascontiguousarray(lists, dtype=np.float32)
            quantizer = faiss.IndexFlatL2(self.centroids.shape[1])
            quantizer.add(self.lists)
            self._search = faiss.IndexIVFFlat(quantizer, self.centroids.shape[1], count)
            self._search.is_trained = True
            self._search.nprobe = min(count, max(_PROBED_MIN, min(_PROBED_MAX,
                                                              count // _PROBED_SHARE)))
            self._quantizer = quantizer  # the index holds it by pointer only
        else:
            self._search = faiss.IndexFlatL2(self.centroids.shape[1])
        self._search.add(self.centroids)
        self._lock = threading.Lock()

    @classmethod
    def train(cls, descriptors: np.ndarray, k: int | None = None, seed: int = 0) -> Vocabulary:
        rng = np.random.default_rng(seed)
        if len(descriptors) > TRAIN_SAMPLE:
            descriptors = descriptors[rng.choice(len(descriptors), TRAIN_SAMPLE, replace=False)]
        k = k or vocabulary_size(len(descriptors))
        k = max(2, min(k, MAX_WORDS, len(descriptors) // 4))
        data = np.ascontiguousarray(descriptors, dtype=np.float32)
        learn = _two_level if k >= TWO_LEVEL_MIN else kmeans
        # Rounded as the cache file stores them, so a reloaded vocabulary assigns alike;
        # centres that round alike (from repeated descriptors) are one word.
        return cls(_distinct_rows(learn(data, k, seed)).astype(np.float32))

    def assign(self, descriptors: np.ndarray, nearest: int = 1) -> np.ndarray:
        """N x ``nearest`` word ids (fewer columns when the vocabulary has fewer words)."""
        nearest = max(1, min(nearest, self.k))
        if len(descriptors) == 0:
            return np.zeros((0, nearest), np.int64)
        with self._lock:  # FAISS index objects are not safe for concurrent searches
            _, found = self._search.search(np.ascontiguousarray(descriptors, np.float32),
                                           nearest)
        words = np.asarray(found, dtype=np.int64)
        short = np.flatnonzero((words < 0).any(axis=1))
        if len(short):  # the lists probed held too few words: search them all
            d = descriptors[short].astype(np.float32)
            dist = (self.centroids ** 2).sum(axis=1)[None, :] - 2.0 * d @ self.centroids.T
            words[short] = np.argsort(dist, axis=1, kind="stable")[:, :nearest]
        return words


@dataclass(frozen=True, slots=True)
class Aggregated:
    """One photo's ASMK representation: a binary signature per distinct word."""

    words: np.ndarray  # W int64, sorted, distinct
    codes: np.ndarray  # W x 2 uint64: 128 sign bits of the aggregated residual


def aggregate(vocabulary: Vocabulary, descriptors: np.ndarray, words: np.ndarray
              ) -> Aggregated:
    """Sum residuals per word (``words``: N x m assignments, each counted), binarise."""
    if len(descriptors) == 0:
        return Aggregated(np.zeros(0, np.int64), np.zeros((0, 2), np.uint64))
    m = words.shape[1]
    flat_words = words.reshape(-1)
    flat_desc = np.repeat(descriptors, m, axis=0)
    residuals = flat_desc - vocabulary.centroids[flat_words]
    residuals /= np.maximum(np.linalg.norm(residuals, axis=1, keepdims=True), 1e-9)
    order = np.argsort(flat_words, kind="stable")
    sorted_words = flat_words[order]
    distinct, starts = np.unique(sorted_words, return_index=True)
    sums = np.add.reduceat(residuals[order], starts, axis=0)
    bits = np.packbits(sums > 0, axis=1)  # W x 16 bytes
    return Aggregated(distinct, np.ascontiguousarray(bits).view(np.uint64).reshape(-1, 2))


# Photos added or removed since the base was merged wait beside it until they amount to an
# eighth of it; then both are merged into a new base (core/postings.py). A change costs
# its own size plus, amortised, a fixed share of the base's.
MERGE_SHARE = 8
# A merge this large (postings) is written to a file and memory-mapped, not held in memory.
SPILL_MIN = 1 << 20
# The journal is folded into a new base once it is this large a share of the base file.
JOURNAL_SHARE = 4


class InvertedFile:
    """Postings grouped by word, for ASMK scoring of a query against every photo at once.

    A base (core/postings.py: flat arrays, memory-mapped once saved) and the photos added
    since it was merged, which are scored with the base's word weights (idf) until the
    next merge makes them exact again. Removed photos score nothing from the moment they
    are removed. Thread-safe: a search reads a snapshot while a change is made.
    """

    def __init__(self, vocabulary: Vocabulary, trained_photos: int = 0,
                 spill_dir: Path | None = None) -> None:
        """Args:
            spill_dir: where a large merge is written and memory-mapped (the file is
                unlinked once mapped); None: merges are kept in memory.
        """
        self.vocabulary = vocabulary
        self.trained_photos = trained_photos  # photos whose features taught the vocabulary
        self.spill_dir = spill_dir if MAP_FILES else None
        self._base = postings.empty(vocabulary.k)
        self._live = np.ones(0, bool)
        self._dead = 0
        # Photos added since the merge: id -> (words, codes, version).
        self._pending: dict[int, tuple[np.ndarray, np.ndarray, bytes]] = {}
        self._pending_size = 0
        self._delta: postings.Postings | None = None  # the pending, packed for scoring
        self._stamp = 0  # counts changes to the pending photos, so a packing knows it is late
        self._lock = threading.RLock()  # the state above, held briefly
        self._changing = threading.RLock()  # one change or save at a time
        # Persistence: the base file this base is (if it is one), its token, the size of
        # its journal (0: the journal cannot be extended), and what is not saved yet.
        self._file: Path | None = None
        self._token = ""
        self._journal_bytes = 0
        # The base file this index comes from, even after merges in memory, and how much
        # of its journal it holds: (path, token, records, bytes). Records another process
        # appends after those are taken in before this one saves (``_catch_up``).
        self._origin: tuple[Path, str, int, int] | None = None
        self._added: set[int] = set()
        self._removed: set[int] = set()

    def __len__(self) -> int:
        with self._lock:
            return self._base.n - self._dead + len(self._pending)

    def ids(self) -> np.ndarray:
        with self._lock:
            base = np.asarray(self._base.ids)[self._live]
            return np.concatenate([base, np.fromiter(self._pending, np.int64,
                                                     len(self._pending))])

    def versions(self) -> dict[int, str]:
        with self._lock:
            base, live = self._base, self._live
            pending = {pid: v for pid, (_, _, v) in self._pending.items()}
        rows = np.flatnonzero(live)
        found = dict(zip(np.asarray(base.ids)[rows].tolist(),
                         (v.decode("utf-8", "replace") for v in np.asarray(base.versions)[rows]),
                         strict=True))
        found.update((pid, v.decode("utf-8", "replace")) for pid, v in pending.items())
        return found

    def add(self, photo_id: int, features: LocalFeatures, version: str = "") -> None:
        self.add_many([(photo_id, features, version)])

    def add_many(self, photos: Sequence[tuple[int, LocalFeatures, str]]) -> None:
        """Add (photo id, features, version) triples, their words found a batch at a time
        (about 16,000 descriptors: one FAISS search each, and the vocabulary's lock is
        never held for long by a refresh while someone searches)."""
        start = 0
        while start < len(photos):
            end, size = start, 0
            while end < len(photos) and (end == start or size + len(photos[end][1])
                                         <= _ASSIGN_BATCH):
                size += len(photos[end][1])
                end += 1
            batch = photos[start:end]
            descriptors = np.concatenate([f.descriptors for _, f, _ in batch])
            words = self.vocabulary.assign(descriptors)
            bounds = np.cumsum([0] + [len(f) for _, f, _ in batch])
            self.add_aggregated_many([
                (photo_id, aggregate(self.vocabulary, features.descriptors, words[a:b]),
                 version)
                for (photo_id, features, version), a, b
                in zip(batch, bounds[:-1], bounds[1:], strict=True)])
            start = end

    def add_aggregated(self, photo_id: int, agg: Aggregated, version: str = "") -> None:
        self.add_aggregated_many([(photo_id, agg, version)])

    def add_aggregated_many(self, photos: Sequence[tuple[int, Aggregated, str]]) -> None:
        """Add (photo id, signatures, version) triples; a photo already in is replaced."""
        # Word ids fit 16 bits (MAX_WORDS): a quarter of the memory of int64.
        self._put_encoded([(int(pid), agg.words.astype(np.uint16), agg.codes,
                            postings.encode_version(version)) for pid, agg, version in photos])

    def _put_encoded(self, photos: Sequence[tuple[int, np.ndarray, np.ndarray, bytes]],
                     journalled: bool = True) -> None:
        with self._changing:
            ids = np.fromiter((p[0] for p in photos), np.int64, len(photos))
            with self._lock:
                self._retire(ids)
                for pid, words, codes, version in photos:
                    old = self._pending.get(pid)
                    self._pending_size += len(words) - (len(old[0]) if old else 0)
                    self._pending[pid] = (words, codes, version)
                if journalled:
                    self._added.update(ids.tolist())
            self._merge_if_due()

    def remove(self, ids: Iterable[int], journalled: bool = True) -> None:
        with self._changing:
            gone = np.fromiter((int(i) for i in ids), np.int64)
            with self._lock:
                self._retire(gone)
                for pid in gone.tolist():
                    old = self._pending.pop(pid, None)
                    if old is not None:
                        self._pending_size -= len(old[0])
                if journalled:
                    self._removed.update(gone.tolist())
                    self._added.difference_update(gone.tolist())
            self._merge_if_due()

    def _retire(self, ids: np.ndarray) -> None:
        """Mask the base's rows of ``ids`` (under the state lock)."""
        rows = self._base.row_of(ids)
        rows = rows[rows >= 0]
        rows = rows[self._live[rows]]
        if len(rows):
            live = self._live.copy()  # searches hold the old mask
            live[rows] = False
            self._live = live
            self._dead += len(np.unique(rows))
        self._delta = None
        self._stamp += 1

    def _merge_if_due(self) -> None:
        base = self._base
        if self._pending_size * MERGE_SHARE > base.size or self._dead * MERGE_SHARE > base.n \
                or (self._pending and base.n == 0):
            self._merge()

    def _merge(self, into: Path | None = None, extractor: str = "") -> None:
        """Fold the pending photos and the removals into a new base: written to ``into``
        (a saved base), to a file in the spill folder when large, or kept in memory."""
        with self._lock:
            base, live, pending = self._base, self._live, dict(self._pending)
        extra = postings.pack([(pid, *data) for pid, data in pending.items()],
                              self.vocabulary.k, base.idf)
        plan = postings.plan_merge(base, live, extra)
        target = into
        if target is None and self.spill_dir is not None and plan.size >= SPILL_MIN:
            target = self.spill_dir / f"local-merge-{os.getpid()}-{id(self)}.asmk"
        if target is None:
            merged = postings.merge(base, extra, plan,
                                    lambda _, shape, dtype: np.empty(shape, dtype))
            token = ""
        else:
            with self._lock:
                self._journal_bytes = 0  # the file may be replaced even if this fails
            try:
                merged, token = self._write(target, extractor, base, extra, plan)
            except (IndexFileError, OSError, ValueError):
                if into is not None:
                    raise
                # A spill that cannot be written (a full disk): merge in memory instead.
                merged = postings.merge(base, extra, plan,
                                        lambda _, shape, dtype: np.empty(shape, dtype))
                target, token = None, ""
            # A spill is mapped: the file itself is no longer needed.
            if into is None and target is not None:
                with contextlib.suppress(OSError):
                    target.unlink()
        with self._lock:
            self._base, self._live, self._dead = merged, np.ones(merged.n, bool), 0
            self._pending, self._pending_size, self._delta = {}, 0, None
            self._stamp += 1
            self._file, self._token = into, token
            self._journal_bytes = 0

    def _write(self, path: Path, extractor: str, base: postings.Postings,
               extra: postings.Postings, plan: postings.MergePlan
               ) -> tuple[postings.Postings, str]:
        """Carry out ``plan`` straight into a base file at ``path``; the result mapped."""
        vocab = self.vocabulary
        lists = vocab.lists if vocab.lists is not None else np.zeros((0, 128), np.float32)
        n, k = len(plan.ids), vocab.k
        writer = BaseWriter(path, {
            "centroids": ((k, vocab.centroids.shape[1]), np.dtype(np.float16)),
            "lists": (lists.shape, np.dtype(np.float32)),
            "ids": ((n,), np.dtype(np.int64)),
            "versions": ((n,), np.dtype(f"S{postings.VERSION_BYTES}")),
            "counts": ((n,), np.dtype(np.uint32)),
            "norms": ((n,), np.dtype(np.float32)),
            "offsets": ((k + 1,), np.dtype(np.int64)),
            "idf": ((k,), np.dtype(np.float32)),
            "rows": ((plan.size,), np.dtype(np.uint32)),
            "codes": ((plan.size, 2), np.dtype(np.uint64)),
        })
        try:
            merged = postings.merge(base, extra, plan, writer.allocate)
            for name, value in (("centroids", vocab.centroids), ("lists", lists),
                                ("ids", merged.ids), ("versions", merged.versions),
                                ("counts", merged.counts), ("norms", merged.norms),
                                ("offsets", merged.offsets), ("idf", merged.idf)):
                writer.array(name)[...] = value
            del merged  # its arrays map the file, which Windows cannot rename while mapped
            token = writer.commit({"format": _FORMAT, "extractor": extractor,
                                   "trained": self.trained_photos})
        except BaseException:
            writer.abort()
            raise
        return _postings_of(read_base(path).arrays), token

    def _snapshot(self) -> tuple[postings.Postings, np.ndarray, int, postings.Postings]:
        """Base, live mask, dead rows and the pending photos packed for scoring, as of one
        moment. The packing (a second at a large refresh's worst) holds no lock."""
        with self._lock:
            base, live, dead, delta = self._base, self._live, self._dead, self._delta
            if delta is not None:
                return base, live, dead, delta
            stamp, pending = self._stamp, list(self._pending.items())
        delta = postings.pack([(pid, *data) for pid, data in pending], self.vocabulary.k,
                              base.idf)
        with self._lock:
            if self._stamp == stamp and self._base is base:
                self._delta = delta
        return base, live, dead, delta

    def search(self, features: LocalFeatures, top_k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(photo ids, scores) best first; the query is scored as is and mirrored."""
        base, live, dead, delta = self._snapshot()
        ids = np.concatenate([np.asarray(base.ids), delta.ids])
        if len(ids) == 0 or len(features) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        best = np.zeros(len(ids), np.float32)
        for side in (features, mirrored(features)):
            words = self.vocabulary.assign(side.descriptors, QUERY_ASSIGN)
            q = aggregate(self.vocabulary, side.descriptors, words)
            q_norm = float(np.sqrt(max(float((base.idf[q.words] ** 2).sum()), 1e-9)))
            scores = np.concatenate([
                postings.score(q.words, q.codes, base, base.idf, live if dead else None),
                postings.score(q.words, q.codes, delta, base.idf)]) / q_norm
            best = np.maximum(best, scores)
        if allowed is not None:
            best[~np.isin(ids, allowed)] = 0.0
        n = min(top_k, int((best > 0).sum()))
        top = _top(best, n)
        return ids[top], best[top]

    # Persistence ---------------------------------------------------------------------------

    def save(self, path: Path, extractor: str) -> None:
        """Append what changed since the last save to the journal of ``path``'s base, or
        write a new base (merging the pending photos into it) when this base is not that
        file, its journal cannot be extended, another process has written either since,
        or the journal has grown past a quarter of the base. Crash-safe: the base is
        replaced atomically, and a torn journal record is never replayed.

        Raises:
            IndexFileError: a file could not be written, or another process held them
                too long; the index in memory is intact.
        """
        with self._changing, writing(path):
            journal = journal_path(path)
            self._catch_up(path, journal)
            if not self._extends(path, journal):
                self._merge(into=path, extractor=extractor)
                with self._lock:
                    self._added.clear()
                    self._removed.clear()
                try:
                    size = start_journal(journal, self._token)
                except IndexFileError:
                    # It may be in place all the same (only the folder's sync failed).
                    size = read_journal(journal, self._token)[1]
                with self._lock:
                    self._journal_bytes = size
                    self._origin = (path, self._token, 0, size) if size else None
                return
            with self._lock:
                if not self._added and not self._removed:
                    return
                added = sorted(pid for pid in self._added if pid in self._pending)
                entry = JournalEntry(
                    np.array(sorted(self._removed), np.int64), np.array(added, np.int64),
                    np.array([self._pending[p][2] for p in added],
                             f"S{postings.VERSION_BYTES}"),
                    np.array([len(self._pending[p][0]) for p in added], np.uint32),
                    np.concatenate([self._pending[p][0] for p in added]) if added
                    else np.zeros(0, np.uint16),
                    np.concatenate([self._pending[p][1] for p in added]) if added
                    else np.zeros((0, 2), np.uint64))
            try:
                size = append_journal(journal, entry)
            except IndexFileError:
                with self._lock:
                    # A torn record would hide what follows it: the next save writes a
                    # base, after taking in what others appended (a torn record stops
                    # that reading, and a whole one is this process's own changes).
                    self._journal_bytes = 0
                raise
            with self._lock:
                self._journal_bytes = size
                records = self._origin[2] + 1 if self._origin is not None else 1
                self._origin = (path, self._token, records, size)
                self._added.clear()
                self._removed.clear()

    def _extends(self, path: Path, journal: Path) -> bool:
        """Whether a save can append to the journal at ``journal``: this index is the base
        at ``path`` (no other process replaced it, no merge here since), it holds all the
        journal's records, and the journal is still small beside the base."""
        if self._file != path or self._journal_bytes <= 0:
            return False
        try:
            base_bytes, journal_bytes = path.stat().st_size, journal.stat().st_size
        except OSError:
            return False
        return (journal_bytes == self._journal_bytes and read_token(path) == self._token
                and journal_bytes * JOURNAL_SHARE <= max(base_bytes, 1 << 20))

    def _catch_up(self, path: Path, journal: Path) -> None:
        """Take in the records another process appended to the journal of the base this
        index comes from, since this one last read or wrote it, whether this save then
        appends or writes a whole base: so neither loses the other's changes. This
        process's own unsaved changes are applied again after them, and win (those of
        its photos already merged here are not: the next refresh, which compares every
        photo with the catalog, settles them). Called under the files' lock."""
        origin = self._origin
        if origin is None or origin[0] != path:
            return
        _, token, seen, seen_bytes = origin
        try:
            grown = journal.stat().st_size > seen_bytes
        except OSError:
            return
        if not grown or read_token(path) != token:
            return  # nothing new; or another base, which a whole base of this one replaces
        entries, size = read_journal(journal, token)
        new = entries[seen:]
        if not new or any(len(e.words) and int(e.words.max()) >= self.vocabulary.k
                          for e in new):
            with self._lock:
                self._journal_bytes = 0 if size == 0 or new else self._journal_bytes
            return
        with self._lock:
            mine = [(pid, *self._pending[pid]) for pid in self._added if pid in self._pending]
            removed = [pid for pid in self._removed if pid not in self._added]
        for entry in new:
            self._replay(entry)
        self.remove(removed, journalled=False)
        self._put_encoded(mine, journalled=False)
        with self._lock:
            self._origin = (path, token, len(entries), size) if size else None
            if self._file == path:
                self._journal_bytes = size  # 0 (torn): the save writes a whole base

    def _replay(self, entry: JournalEntry) -> None:
        self.remove(entry.removed, journalled=False)
        bounds = np.concatenate([[0], np.cumsum(entry.counts, dtype=np.int64)])
        self._put_encoded([
            (int(pid), entry.words[a:b], entry.codes[a:b], bytes(version))
            for pid, version, a, b in zip(entry.added.tolist(), entry.versions,
                                          bounds[:-1], bounds[1:], strict=True)],
            journalled=False)

    @classmethod
    def load(cls, path: Path, extractor: str, spill_dir: Path | None = None) -> InvertedFile:
        """The base at ``path`` with its journal replayed.

        Raises:
            IndexFileError: missing, damaged, or for another extractor or format.
        """
        with reading(path):
            found = read_base(path)
            entries, journal_bytes = read_journal(journal_path(path), found.token)
        meta, arrays = found.meta, found.arrays
        if meta.get("format") != _FORMAT or meta.get("extractor") != extractor:
            raise IndexFileError("the local-feature index is for other features")
        try:
            _check_layout(arrays)
            centroids = arrays["centroids"].astype(np.float32)
            if len(centroids) > 65536:  # word ids are kept in 16 bits
                raise IndexFileError("the local-feature index has too many words")
            base = _postings_of(arrays)
            trained = int(meta["trained"])
        except (KeyError, ValueError, TypeError) as exc:
            raise IndexFileError(f"the local-feature index {path} is damaged: {exc}") \
                from exc
        k = len(centroids)
        offsets = np.asarray(base.offsets)
        n = base.n
        if base.k != k or len(base.idf) != k or len(base.versions) != n \
                or len(base.counts) != n or len(base.norms) != n \
                or len(base.rows) != base.size or len(base.codes) != base.size \
                or offsets[0] != 0 or offsets[-1] != base.size or np.any(np.diff(offsets) < 0) \
                or int(np.asarray(base.counts).sum()) != base.size \
                or (n > 1 and np.any(np.diff(np.asarray(base.ids)) <= 0)):
            raise IndexFileError("the local-feature index file is inconsistent")
        inverted = cls(Vocabulary(centroids, arrays["lists"]), trained, spill_dir)
        inverted._base, inverted._live = base, np.ones(n, bool)
        inverted._file, inverted._token = path, found.token
        for entry in entries:
            if len(entry.words) and int(entry.words.max()) >= k:
                journal_bytes = 0
                break
            inverted._replay(entry)
        if journal_bytes:
            inverted._origin = (path, found.token, len(entries), journal_bytes)
            if inverted._file == path:  # no merge replaced the base while replaying
                inverted._journal_bytes = journal_bytes
        return inverted


# Each array of a base: its dtype and number of dimensions.
_LAYOUT = {"centroids": ("<f2", 2), "lists": ("<f4", 2), "ids": ("<i8", 1),
           "versions": (f"|S{postings.VERSION_BYTES}", 1), "counts": ("<u4", 1),
           "norms": ("<f4", 1), "offsets": ("<i8", 1), "idf": ("<f4", 1), "rows": ("<u4", 1),
           "codes": ("<u8", 2)}


def _check_layout(arrays: dict[str, np.ndarray]) -> None:
    for name, (dtype, ndim) in _LAYOUT.items():
        found = arrays[name]
        if found.dtype != np.dtype(dtype) or found.ndim != ndim:
            raise ValueError(f"{name} is {found.dtype} in {found.ndim} dimensions")
    if arrays["codes"].shape[1] != 2 or arrays["centroids"].shape[1] != 128 \
            or arrays["lists"].shape[1] != 128:
        raise ValueError("an array has the wrong width")


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` best scores, best first, ties in index order (as a stable
    sort of them all, without sorting a million scores for a hundred)."""
    if n <= 0:
        return np.zeros(0, np.int64)
    candidates = np.arange(len(scores))
    if n < len(scores):
        kth = np.partition(scores, len(scores) - n)[len(scores) - n]
        candidates = np.flatnonzero(scores >= kth)
    order = np.argsort(-scores[candidates], kind="stable")
    return candidates[order[:n]]


def _postings_of(arrays: dict[str, np.ndarray]) -> postings.Postings:
    return postings.Postings(arrays["ids"], arrays["versions"], arrays["counts"],
                             arrays["offsets"], arrays["rows"], arrays["codes"],
                             arrays["norms"], arrays["idf"])
