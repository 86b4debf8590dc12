"""The classic bag-of-visual-words baseline (Sivic & Zisserman 2003): tf-idf over words.

Only for `imagesearch eval`, to show in the same table what the ASMK shortlist and
spatial verification add over the textbook pipeline on the same features and vocabulary.
"""

from __future__ import annotations

import numpy as np

from imagesearch.core.local_features import LocalFeatures
from imagesearch.core.local_index import Vocabulary


class BagOfWords:
    """L2-normalised tf-idf histograms, scored by cosine through an inverted file."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self._ids: list[int] = []
        self._words: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self._packed: tuple[np.ndarray, ...] | None = None

    def add(self, photo_id: int, features: LocalFeatures) -> None:
        words = self.vocabulary.assign(features.descriptors)[:, 0]
        distinct, counts = np.unique(words, return_counts=True)
        self._ids.append(int(photo_id))
        self._words.append(distinct)
        self._counts.append(counts.astype(np.float32))
        self._packed = None

    def _pack(self) -> tuple[np.ndarray, ...]:
        if self._packed is None:
            k = self.vocabulary.k
            rows = np.repeat(np.arange(len(self._ids)), [len(w) for w in self._words])
            words = np.concatenate(self._words) if self._words else np.zeros(0, np.int64)
            tf = np.concatenate(self._counts) if self._counts else np.zeros(0, np.float32)
            idf = np.log((len(self._ids) + 1.0) / (np.bincount(words, minlength=k) + 1.0))
            weight = tf * idf[words]
            norms = np.sqrt(np.bincount(rows, weights=weight ** 2, minlength=len(self._ids)))
            weight = weight / np.maximum(norms[rows], 1e-9)
            order = np.argsort(words, kind="stable")
            offsets = np.searchsorted(words[order], np.arange(k + 1))
            self._packed = (offsets, rows[order], weight[order].astype(np.float32),
                            idf.astype(np.float32), np.asarray(self._ids, np.int64))
        return self._packed

    def search(self, features: LocalFeatures, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        offsets, rows, weight, idf, ids = self._pack()
        scores = np.zeros(len(ids), np.float32)
        if len(features) == 0 or len(ids) == 0:
            return ids[:0], scores[:0]
        words = self.vocabulary.assign(features.descriptors)[:, 0]
        distinct, counts = np.unique(words, return_counts=True)
        q = counts * idf[distinct]
        q /= max(float(np.linalg.norm(q)), 1e-9)
        for word, value in zip(distinct, q, strict=True):
            lo, hi = offsets[word], offsets[word + 1]
            np.add.at(scores, rows[lo:hi], weight[lo:hi] * value)
        n = min(top_k, int((scores > 0).sum()))
        top = np.argsort(-scores, kind="stable")[:n]
        return ids[top], scores[top]
