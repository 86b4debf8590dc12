"""One runner per evaluation stage: a query in, a ranking of benchmark photos out, timed."""

from __future__ import annotations

import abc
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imagesearch.core.bovw import BagOfWords
from imagesearch.core.feature_codec import decode_features
from imagesearch.domain import Query, SearchHit
from imagesearch.errors import FeatureDataError
from imagesearch.services.context import AppContext

STAGES = ("global", "annoy", "bovw", "bovw-sp", "local", "sp", "sp-all", "ames")
BoxT = tuple[float, float, float, float]


@dataclass
class StageRun:
    """One query's answer: benchmark indices best first, their scores and boxes."""

    ranking: list[int]
    scores: list[float]
    seconds: float
    boxes: dict[int, BoxT | None] = field(default_factory=dict)


def foreign_index(photo_id: int) -> int:
    """A library photo that is not in the benchmark: -1 - its catalog id (and back)."""
    return -1 - photo_id


class Runner(abc.ABC):
    takes_text = False

    def __init__(self, ctx: AppContext, ids: dict[int, int]) -> None:
        self.ctx = ctx
        self.ids = ids  # catalog photo id -> benchmark index

    @abc.abstractmethod
    def image(self, path: Path, k: int) -> StageRun:
        """The stage's answer to an image query."""

    def text(self, query: str, k: int) -> StageRun | None:
        return None

    def bytes_per_photo(self) -> float | None:
        """What the stage keeps a photo in the catalog (the truth)."""
        return None

    def index_bytes_per_photo(self) -> float | None:
        """What its derived index files add a photo (rebuilt from the catalog if lost)."""
        return None

    def _run(self, pairs: Sequence[tuple[int, float]], started: float,
             boxes: dict[int, BoxT | None] | None = None) -> StageRun:
        seconds = time.perf_counter() - started
        kept = [(self.index_of(p), s) for p, s in pairs]
        return StageRun([i for i, _ in kept], [s for _, s in kept], seconds,
                        {self.index_of(p): b for p, b in (boxes or {}).items()})

    def index_of(self, photo_id: int) -> int:
        """The photo's benchmark index; a photo outside the benchmark (a reused library,
        a stray file in db/) gets a negative one of its own: it counts as a wrong answer,
        never as junk."""
        return self.ids.get(photo_id, foreign_index(photo_id))

    def _hits(self, hits: Sequence[SearchHit], started: float) -> StageRun:
        boxes: dict[int, BoxT | None] = {
            h.photo_id: (h.box.x0, h.box.y0, h.box.x1, h.box.y1) if h.box else None
            for h in hits}
        return self._run([(h.photo_id, h.score) for h in hits], started, boxes)

    def _global_bytes(self) -> float | None:
        index = self.ctx.vectors.index()
        if index is None:
            return None
        codec = self.ctx.vectors.rows.codec()  # a compact library's product codes
        return float(codec.parts if codec is not None else index.dim * 2)  # else float16

    def _feature_bytes(self) -> float | None:
        extractor = self.ctx.local.extractor
        if extractor is None:
            return None
        n, total = self.ctx.catalog.feature_bytes(extractor)
        return total / max(n, 1)

    def _local_index_bytes(self) -> float | None:
        path = self.ctx.local.path
        photos = self.ctx.local.status().photos
        return path.stat().st_size / photos if path.exists() and photos else None

    def _faiss_bytes(self) -> float | None:
        path = self.ctx.vectors.path
        index = self.ctx.vectors.index()
        return path.stat().st_size / len(index) if path.exists() and index else None


class GlobalRunner(Runner):
    takes_text = True

    def image(self, path: Path, k: int) -> StageRun:
        started = time.perf_counter()
        vec = self.ctx.search.query_vector(Query(image=path))
        return self._hits(self.ctx.search.search_vector(vec, k), started)

    def text(self, query: str, k: int) -> StageRun | None:
        started = time.perf_counter()
        vec = self.ctx.search.query_vector(Query(text=query))
        return self._hits(self.ctx.search.search_vector(vec, k), started)

    def bytes_per_photo(self) -> float | None:
        return self._global_bytes()

    def index_bytes_per_photo(self) -> float | None:
        return self._faiss_bytes()


class AnnoyRunner(GlobalRunner):
    """The same vectors in Annoy (angular, 50 trees), for the FAISS vs Annoy comparison."""

    TREES = 50

    def __init__(self, ctx: AppContext, ids: dict[int, int]) -> None:
        super().__init__(ctx, ids)
        from annoy import AnnoyIndex

        photo_ids, vectors = ctx.vectors.rows.all()
        self._ids = photo_ids
        self._index = AnnoyIndex(vectors.shape[1], "angular")
        for row, vec in enumerate(vectors):
            self._index.add_item(row, vec)
        self._index.build(self.TREES, n_jobs=1)
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "annoy.ann"
            self._index.save(str(file))
            self._size = file.stat().st_size / max(len(photo_ids), 1)
            self._index.unload()
            self._index = AnnoyIndex(vectors.shape[1], "angular")
            self._index.load(str(file))

    def _search(self, vec: np.ndarray, k: int, started: float) -> StageRun:
        rows, dist = self._index.get_nns_by_vector(vec.tolist(), k, include_distances=True)
        # Angular distance d = sqrt(2 - 2 cos): back to the cosine, as FAISS reports.
        pairs = [(int(self._ids[r]), 1.0 - d * d / 2.0) for r, d in zip(rows, dist, strict=True)]
        return self._run(pairs, started)

    def image(self, path: Path, k: int) -> StageRun:
        started = time.perf_counter()
        return self._search(self.ctx.search.query_vector(Query(image=path)), k, started)

    def text(self, query: str, k: int) -> StageRun | None:
        started = time.perf_counter()
        return self._search(self.ctx.search.query_vector(Query(text=query)), k, started)

    def bytes_per_photo(self) -> float | None:
        return self._global_bytes()

    def index_bytes_per_photo(self) -> float | None:
        return self._size


class LocalRunner(Runner):
    """The ASMK shortlist alone."""

    def image(self, path: Path, k: int) -> StageRun:
        started = time.perf_counter()
        prepared = self._prepare(path)
        found = self.ctx.local.shortlist(prepared.plain, k)
        if found is None:
            return self._run([], started)
        ids, scores = found
        return self._run([(int(i), float(s)) for i, s in zip(ids, scores, strict=True)],
                         started)

    def _prepare(self, path: Path) -> Any:
        reranker = self.ctx.rerank.get("sp")
        assert reranker is not None
        return reranker.prepare(path)

    def bytes_per_photo(self) -> float | None:
        return self._feature_bytes()

    def index_bytes_per_photo(self) -> float | None:
        return self._local_index_bytes()


class RerankRunner(Runner):
    """The app's own search: the best shortlist, then a re-ranker (sp or ames)."""

    def __init__(self, ctx: AppContext, ids: dict[int, int], stage: str) -> None:
        super().__init__(ctx, ids)
        self.stage = stage

    def image(self, path: Path, k: int) -> StageRun:
        started = time.perf_counter()
        search_round = self.ctx.search.begin(Query(image=path, top_k=k), rerank=True,
                                             using=self.stage)
        return self._hits(search_round.refine(), started)

    def bytes_per_photo(self) -> float | None:
        parts = [b for b in (self._global_bytes(), self._feature_bytes()) if b is not None]
        return sum(parts) if parts else None

    def index_bytes_per_photo(self) -> float | None:
        parts = [b for b in (self._faiss_bytes(), self._local_index_bytes()) if b]
        return sum(parts) if parts else None


class BagOfWordsRunner(LocalRunner):
    """tf-idf bag of words on the same features and vocabulary; with ``verify``, followed by
    spatial verification of its shortlist (the textbook pipeline)."""

    def __init__(self, ctx: AppContext, ids: dict[int, int], verify: bool) -> None:
        super().__init__(ctx, ids)
        vocabulary = ctx.local.vocabulary()
        assert vocabulary is not None and ctx.local.extractor is not None
        self.verify = verify
        self.bow = BagOfWords(vocabulary)
        for chunk in ctx.catalog.iter_features(ctx.local.extractor):
            for photo_id, blob in chunk:
                try:
                    self.bow.add(photo_id, decode_features(blob))
                except FeatureDataError:
                    continue

    def image(self, path: Path, k: int) -> StageRun:
        started = time.perf_counter()
        prepared = self._prepare(path)
        # Verified as deep as the app's weight-free search verifies ASMK's shortlist.
        depth = self.ctx.settings.weight_free_shortlist if self.verify else k
        ids, scores = self.bow.search(prepared.plain, max(k, depth))
        pairs = list(zip(ids.tolist(), scores.tolist(), strict=True))
        if not self.verify:
            return self._run(pairs, started)
        reranker = self.ctx.rerank.get("sp")
        assert reranker is not None
        shortlist = pairs[:depth]
        reranked = self.ctx.rerank.rerank(reranker, prepared, shortlist, threading.Event())
        order = list(zip(reranked.ids, reranked.scores, strict=True))
        seen = set(reranked.ids)
        order += [(p, s) for p, s in pairs if p not in seen]
        boxes = {p: e.box for p, e in reranked.evidence.items()}
        return self._run(order, started, boxes)


class VerifyAllRunner(LocalRunner):
    """Spatial verification of every photo, no shortlist: what the shortlist costs.

    Every photo is verified, in the ASMK order a shortlist would have, which also breaks the
    ties as the app's search does (the photos left unverified keep that order, not their
    ids')."""

    def image(self, path: Path, k: int) -> StageRun:
        started = time.perf_counter()
        prepared = self._prepare(path)
        reranker = self.ctx.rerank.get("sp")
        assert reranker is not None and self.ctx.local.extractor is not None
        ids = [int(i) for i in self.ctx.catalog.feature_ids(self.ctx.local.extractor)]
        found = self.ctx.local.shortlist(prepared.plain, len(ids))
        ranked = [] if found is None else [
            (int(i), float(s)) for i, s in zip(found[0], found[1], strict=True)]
        seen = {i for i, _ in ranked}
        everyone = ranked + [(i, 0.0) for i in ids if i not in seen]
        reranked = self.ctx.rerank.rerank(reranker, prepared, everyone, threading.Event(),
                                          budget_s=None)
        boxes = {p: e.box for p, e in reranked.evidence.items()}
        return self._run(list(zip(reranked.ids, reranked.scores, strict=True))[:k], started,
                         boxes)


def make_runner(name: str, ctx: AppContext, ids: dict[int, int]) -> Runner | str:
    """The runner for a stage, or why it cannot run here."""
    needs_model = name in ("global", "annoy")
    if needs_model and not ctx.models.weights_present():
        return f"the model {ctx.models.model_id} is not installed"
    if name == "annoy":
        try:
            import annoy  # noqa: F401
        except ImportError:
            return "the annoy package is not installed (pip install annoy)"
        return AnnoyRunner(ctx, ids)
    if name == "global":
        return GlobalRunner(ctx, ids)
    if ctx.local.extractor is None:
        return "local features are off in this library's settings"
    if name in ("bovw", "bovw-sp", "local") and ctx.local.vocabulary() is None:
        return "too few photos with local features for a visual vocabulary"
    if name == "local":
        return LocalRunner(ctx, ids)
    if name in ("bovw", "bovw-sp"):
        return BagOfWordsRunner(ctx, ids, verify=name == "bovw-sp")
    if name == "sp-all":
        return VerifyAllRunner(ctx, ids)
    if name == "ames" and ctx.rerank.get("ames") is None:
        return "AMES weights are not installed (see `imagesearch models list`)"
    return RerankRunner(ctx, ids, name)
