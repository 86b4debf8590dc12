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
import io
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagesearch.core.local_features import LocalFeatures, mirrored
from imagesearch.errors import IndexFileError

_FORMAT = 4  # 4: a vocabulary learned in two levels, with its word lists
ALPHA = 3.0  # selectivity of the kernel
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
# words (a list per 64 words, a sixteenth of the lists probed): at 16,384 words 99.7% the
# exact nearest word, 3.8x faster than the HNSW graph it replaced (99.97%).
APPROXIMATE_MIN = 4096
_WORDS_PER_LIST, _PROBED_SHARE = 64, 16
_ASSIGN_BATCH = 16_384  # descriptors given their words in one search when photos are added


def kmeans(data: np.ndarray, k: int, seed: int) -> np.ndarray:
    import faiss

    learner = faiss.Kmeans(data.shape[1], k, niter=12, seed=seed, verbose=False,
                           min_points_per_centroid=1, max_points_per_centroid=64)
    learner.train(np.ascontiguousarray(data, dtype=np.float32))
    return np.asarray(learner.centroids, dtype=np.float32)


def _nearest(centroids: np.ndarray, data: np.ndarray) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatL2(centroids.shape[1])
    flat.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, nearest = flat.search(np.ascontiguousarray(data, dtype=np.float32), 1)
    return np.asarray(nearest[:, 0], dtype=np.int64)


def _shares(counts: np.ndarray, total: int) -> np.ndarray:
    """``total`` split over cells in proportion to ``counts`` (largest remainders)."""
    exact = total * counts / max(int(counts.sum()), 1)
    share = np.floor(exact).astype(np.int64)
    share[np.argsort(-(exact - share), kind="stable")[:total - int(share.sum())]] += 1
    return share


def _capped_shares(counts: np.ndarray, caps: np.ndarray, total: int) -> np.ndarray:
    """``total`` split in proportion to ``counts``, no cell above its cap: what a full
    cell cannot take goes to the others, in proportion again."""
    share = np.zeros(len(counts), np.int64)
    while (left := total - int(share.sum())) > 0:
        room = caps - share
        if not (counts[room > 0] > 0).any():
            break
        share += np.minimum(_shares(np.where(room > 0, counts, 0), left), room)
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
    coarse = kmeans(data, 2 ** round(float(np.log2(np.sqrt(k)))), seed)
    cell = _nearest(coarse, data)
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
            self._search.nprobe = max(1, count // _PROBED_SHARE)
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


def _kernel(codes_a: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
    """sigma_alpha of the normalised Hamming similarity, element by element."""
    hamming = (np.bitwise_count(codes_a[:, 0] ^ codes_b[:, 0])
               + np.bitwise_count(codes_a[:, 1] ^ codes_b[:, 1])).astype(np.float32)
    u = 1.0 - hamming / 64.0  # 1 - 2h/128
    return np.where(u > 0, u ** ALPHA, 0.0).astype(np.float32)


class InvertedFile:
    """Entries grouped by word, for ASMK scoring of a query against every photo at once.

    Thread-safe for concurrent searches; additions and removals take a lock and rebuild
    the compact arrays lazily.
    """

    def __init__(self, vocabulary: Vocabulary, trained_photos: int = 0) -> None:
        self.vocabulary = vocabulary
        self.trained_photos = trained_photos  # photos whose features taught the vocabulary
        self._photos: dict[int, Aggregated] = {}
        # Which version of each photo's features is in: a re-made record is re-added.
        self._versions: dict[int, str] = {}
        self._lock = threading.RLock()
        self._packed: tuple[np.ndarray, ...] | None = None

    def __len__(self) -> int:
        return len(self._photos)

    def ids(self) -> np.ndarray:
        with self._lock:
            return np.fromiter(self._photos, np.int64, len(self._photos))

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
            for (photo_id, features, version), a, b in zip(batch, bounds[:-1], bounds[1:],
                                                            strict=True):
                self.add_aggregated(photo_id, aggregate(self.vocabulary,
                                                        features.descriptors, words[a:b]),
                                    version)
            start = end

    def add_aggregated(self, photo_id: int, agg: Aggregated, version: str = "") -> None:
        # Word ids fit 16 bits (MAX_WORDS): a quarter of the memory of int64.
        compact = Aggregated(agg.words.astype(np.uint16), agg.codes)
        with self._lock:
            self._photos[int(photo_id)] = compact
            self._versions[int(photo_id)] = version
            self._packed = None

    def versions(self) -> dict[int, str]:
        with self._lock:
            return dict(self._versions)

    def remove(self, ids: Iterable[int]) -> None:
        with self._lock:
            for i in ids:
                self._photos.pop(int(i), None)
                self._versions.pop(int(i), None)
            self._packed = None

    def _pack(self) -> tuple[np.ndarray, ...]:
        """(offsets by word, photo row, code, photo ids, photo norms, idf) built once."""
        with self._lock:
            if self._packed is not None:
                return self._packed
            ids = np.fromiter(self._photos, np.int64, len(self._photos))
            aggs = list(self._photos.values())
            counts = np.fromiter((len(a.words) for a in aggs), np.int64, len(aggs))
            words = np.concatenate([a.words for a in aggs]).astype(np.int64) if aggs \
                else np.zeros(0, np.int64)
            codes = np.concatenate([a.codes for a in aggs]) if aggs \
                else np.zeros((0, 2), np.uint64)
            rows = np.repeat(np.arange(len(aggs)), counts)
            order = np.argsort(words, kind="stable")
            words, codes, rows = words[order], codes[order], rows[order]
            k = self.vocabulary.k
            df = np.bincount(words, minlength=k).astype(np.float32)
            idf = np.log((len(aggs) + 1.0) / (df + 1.0)).astype(np.float32)
            offsets = np.searchsorted(words, np.arange(k + 1)).astype(np.int64)
            # A photo's self-similarity: every word agrees with itself (sigma(1) = 1).
            norms = np.sqrt(np.maximum(np.bincount(rows, weights=idf[words] ** 2,
                                                   minlength=len(aggs)), 1e-9))
            self._packed = (offsets, rows, codes, ids, norms.astype(np.float32), idf)
            return self._packed

    def search(self, features: LocalFeatures, top_k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(photo ids, scores) best first; the query is scored as is and mirrored."""
        offsets, rows, codes, ids, norms, idf = self._pack()
        if len(ids) == 0 or len(features) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        best = np.zeros(len(ids), np.float32)
        for side in (features, mirrored(features)):
            words = self.vocabulary.assign(side.descriptors, QUERY_ASSIGN)
            q = aggregate(self.vocabulary, side.descriptors, words)
            best = np.maximum(best, self._score(q, offsets, rows, codes, norms, idf))
        if allowed is not None:
            best[~np.isin(ids, allowed)] = 0.0
        n = min(top_k, int((best > 0).sum()))
        top = np.argsort(-best, kind="stable")[:n]
        return ids[top], best[top]

    @staticmethod
    def _score(q: Aggregated, offsets: np.ndarray, rows: np.ndarray, codes: np.ndarray,
               norms: np.ndarray, idf: np.ndarray) -> np.ndarray:
        starts, ends = offsets[q.words], offsets[q.words + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        scores = np.zeros(len(norms), np.float32)
        if total == 0:
            return scores
        # Every (query word, posting) pair, without a Python loop over words.
        which = np.repeat(np.arange(len(q.words)), lengths)
        within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        postings = np.repeat(starts, lengths) + within
        weight = idf[q.words[which]] ** 2
        sim = _kernel(q.codes[which], codes[postings]) * weight
        np.add.at(scores, rows[postings], sim)
        q_norm = float(np.sqrt(max(float((idf[q.words] ** 2).sum()), 1e-9)))
        result: np.ndarray = scores / (norms * q_norm)
        return result

    # Persistence ---------------------------------------------------------------------------

    def save(self, path: Path, extractor: str) -> None:
        """Write atomically (temp file, fsync, rename)."""
        with self._lock:
            ids = np.fromiter(self._photos, np.int64, len(self._photos))
            aggs = list(self._photos.values())
            versions = np.array([self._versions.get(int(i), "") for i in ids], dtype="U32")
        counts = np.fromiter((len(a.words) for a in aggs), np.int64, len(aggs))
        buffer = io.BytesIO()
        np.savez(buffer, format=np.int64(_FORMAT), extractor=np.array(extractor),
                 centroids=self.vocabulary.centroids.astype(np.float16),
                 lists=self.vocabulary.lists if self.vocabulary.lists is not None
                 else np.zeros((0, 128), np.float32),
                 trained=np.int64(self.trained_photos), ids=ids, counts=counts,
                 versions=versions,
                 words=np.concatenate([a.words for a in aggs]) if aggs
                 else np.zeros(0, np.uint16),
                 codes=np.concatenate([a.codes for a in aggs]) if aggs
                 else np.zeros((0, 2), np.uint64))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buffer.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise IndexFileError(f"could not save the local-feature index {path}: {exc}") \
                from exc

    @classmethod
    def load(cls, path: Path, extractor: str) -> InvertedFile:
        """Raises IndexFileError when missing, damaged or for another extractor."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format"]) != _FORMAT or str(data["extractor"]) != extractor:
                    raise IndexFileError("the local-feature index is for other features")
                centroids = data["centroids"].astype(np.float32)
                if len(centroids) > 65536:  # word ids are kept in 16 bits
                    raise IndexFileError("the local-feature index has too many words")
                inverted = cls(Vocabulary(centroids, data["lists"]), int(data["trained"]))
                ids, counts, versions = data["ids"], data["counts"], data["versions"]
                words, codes = data["words"], data["codes"]
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise IndexFileError(f"cannot read the local-feature index {path}: {exc}") \
                from exc
        if int(counts.sum()) != len(words) or len(words) != len(codes) \
                or len(ids) != len(counts) or len(versions) != len(ids) \
                or (len(words) and int(words.max()) >= len(centroids)):
            raise IndexFileError("the local-feature index file is inconsistent")
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for i, pid in enumerate(ids):
            inverted._photos[int(pid)] = Aggregated(words[bounds[i]:bounds[i + 1]],
                                                    codes[bounds[i]:bounds[i + 1]])
            inverted._versions[int(pid)] = str(versions[i])
        return inverted
