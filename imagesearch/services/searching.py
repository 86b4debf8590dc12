"""Search: a description, an image, or both; then, for images, the re-rank stage.

A search is a round: the first hits come from the shortlist at once (the global
embedding's, or the local-feature index's when no model is installed); an image query can
then be refined by a re-ranker, which moves the photos that really show the query's
object up and says where it is.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagesearch.config import Settings
from imagesearch.core.encoder import Encoder
from imagesearch.core.imaging import load_query_image
from imagesearch.core.rerank import Evidence, Reranker
from imagesearch.core.vector_index import VectorIndex
from imagesearch.domain import Box, PhotoRecord, Query, SearchHit
from imagesearch.errors import ModelUnavailable, QueryError
from imagesearch.services.local_search import MIN_PHOTOS, LocalIndexService
from imagesearch.services.models import ModelManager
from imagesearch.services.reranking import DEFAULT_BUDGET_S, Reranked, RerankService
from imagesearch.services.vector_store import VectorStore

if TYPE_CHECKING:
    from imagesearch.storage.catalog import Catalog

log = logging.getLogger(__name__)

# How strongly a "-term" pushes results away, relative to the positive query.
NEGATIVE_WEIGHT = 0.5

_NEGATIVE = re.compile(r'(?:(?<=\s)|^)-(?:"([^"]+)"|(\S+))')

RERANKER_FOR_SETTING = {"spatial": "sp", "ames": "ames"}
# The re-rank itself always gets this long, however long the query side took.
_MIN_BUDGET_S = 1.0
_STOPPED_EARLY = "refinement stopped early: the photos it did not reach keep their first order"


def split_negatives(text: str) -> tuple[str, list[str]]:
    """'cat on a sofa -dog -"red ball"' to ('cat on a sofa', ['dog', 'red ball'])."""
    negatives = [a or b for a, b in _NEGATIVE.findall(text)]
    positive = " ".join(_NEGATIVE.sub(" ", text).split())
    return positive, [n for n in negatives if n.strip()]


@dataclass
class SearchRound:
    """One query: ``hits`` at once; ``refine()`` for the re-ranked order when possible."""

    query: Query
    hits: list[SearchHit]
    notes: list[str] = field(default_factory=list)
    shortlist: list[tuple[int, float]] = field(default_factory=list)
    global_scores: dict[int, float] = field(default_factory=dict)
    reranker: Reranker | None = None
    prepared: Any = None  # the re-ranker's query side
    prepare_later: bool = False  # a heavy query side (AMES): computed by refine(), not begin()
    vector: np.ndarray | None = None  # the global query vector, when a model ran
    _service: SearchService | None = None

    @property
    def can_refine(self) -> bool:
        return self.reranker is not None and bool(self.shortlist) and (
            self.prepared is not None or self.prepare_later)

    def refine(self, cancel: threading.Event | None = None) -> list[SearchHit]:
        """The re-ranked hits (the first hits again when there is nothing to refine)."""
        if not self.can_refine or self._service is None:
            return self.hits
        return self._service.refine(self, cancel)


class SearchService:
    """Turns a query into a shortlist and the shortlist into hits."""

    def __init__(self, settings: Settings, catalog: Catalog, models: ModelManager,
                 vectors: VectorStore, local: LocalIndexService,
                 rerank: RerankService) -> None:
        self.settings = settings
        self.catalog = catalog
        self.models = models
        self.vectors = vectors
        self.local = local
        self.rerank = rerank
        # Why the chosen re-ranker cannot run (AMES without weights): said once, then
        # spatial verification stands in.
        self.rerank_note: str | None = None
        self._noted = False

    # The query vector ---------------------------------------------------------------------

    def query_vector(self, query: Query) -> np.ndarray:
        """The L2-normalised vector a query stands for.

        Raises:
            QueryError: nothing to search for, or the query image is unreadable.
            ModelUnavailable: the model's weights are not installed.
        """
        return query_vector(self.models.encoder(), query, self._image_vector)

    def _image_vector(self, image: Path | bytes) -> np.ndarray:
        encoder = self.models.encoder()
        if isinstance(image, Path):
            # A photo already in the library: its stored vector, no decode needed.
            record = self.catalog.photo_by_path(image)
            if record is not None and record.mtime == _mtime(image):
                stored = self.vectors.rows.one(record.id) \
                    if encoder.model_id == self.vectors.model_id else None
                if stored is not None:
                    return stored / max(float(np.linalg.norm(stored)), 1e-12)
        try:
            pixels = load_query_image(image, encoder.spec)
        except ValueError as exc:
            raise QueryError(f"Cannot use that image: {exc}") from exc
        return np.asarray(encoder.encode_images(pixels[None])[0], dtype=np.float32)

    # Rounds -------------------------------------------------------------------------------

    def search(self, query: Query, rerank: bool | None = None,
               cancel: threading.Event | None = None) -> list[SearchHit]:
        """The final hits: re-ranked when the query has an image and re-ranking is on."""
        search_round = self.begin(query, rerank)
        return search_round.refine(cancel)

    def begin(self, query: Query, rerank: bool | None = None,
              shortlist: int | None = None, using: str | None = None,
              every_note: bool = False) -> SearchRound:
        """Start a round: the shortlist and the first hits.

        Args:
            rerank: force the re-rank stage on or off (None: the settings decide).
            shortlist: candidates to re-rank from each source (None: the settings' value;
                ``weight_free_shortlist`` when the local features' index is the only
                source and spatial verification, if anything, re-ranks).
            using: the re-ranker by name ("sp", "ames"; None: the settings decide).
            every_note: repeat the notes a window shows once a session (AMES missing) for
                a caller that sees only this round (a command-line search answered here).

        Raises:
            QueryError, ModelUnavailable: nothing can answer this query.
        """
        notes: list[str] = []
        allowed = self.catalog.ids_under(query.folder) if query.folder is not None else None
        vector = self._vector_or_none(query, notes)
        k = max(shortlist or self.settings.shortlist, 1)
        global_ids, global_scores = self._global(vector, max(k, query.top_k), allowed)
        reranker = self._reranker(query, rerank, using, notes, every_note)
        if not global_ids and shortlist is None and (reranker is None or reranker.name == "sp"):
            # The local features' index is the only source (no model, or none of its
            # vectors yet) and verification the only judge: it looks deeper (README).
            k = max(self.settings.weight_free_shortlist, 1)
        # The local shortlist needs the query's SIFT keypoints whatever re-ranks it.
        keypoints = self._keypoints(query, notes, vector is None) \
            if (reranker is not None or vector is None) else None
        local = self._local(keypoints, k, allowed, notes) if keypoints is not None else []
        prepared = keypoints if reranker is not None and reranker.name == "sp" else None
        # Any other re-ranker's query side (DINOv2 for AMES: seconds on a CPU) waits for
        # refine(), so the first hits are not held back by it.
        later = reranker is not None and reranker.name != "sp" and query.image is not None
        if vector is None and not local and not notes:
            notes.append("no photo has been indexed for search by image yet")
        first = list(zip(global_ids, global_scores, strict=True)) if vector is not None \
            else local
        candidates = _candidates(first[:k], local)
        scores = dict(zip(global_ids, global_scores, strict=True))
        search_round = SearchRound(
            query=query, hits=self._hits(first[:query.top_k], scores), notes=notes,
            shortlist=candidates, global_scores=scores,
            reranker=reranker if prepared is not None or later else None, prepared=prepared,
            prepare_later=later, vector=vector, _service=self)
        return search_round

    def refine(self, search_round: SearchRound, cancel: threading.Event | None = None
               ) -> list[SearchHit]:
        assert search_round.reranker is not None
        if cancel is not None and cancel.is_set():
            search_round.notes.append(_STOPPED_EARLY)
            return search_round.hits
        started = time.monotonic()
        if search_round.prepared is None:
            assert search_round.query.image is not None
            try:
                search_round.prepared = self.rerank.prepare(search_round.reranker,
                                                            search_round.query.image)
            except ValueError as exc:
                search_round.notes.append(f"the image cannot be re-ranked: {exc}")
                search_round.prepare_later = False
                return search_round.hits
            if cancel is not None and cancel.is_set():  # while the query side was computed
                search_round.notes.append(_STOPPED_EARLY)
                return search_round.hits
        # The query side's time (AMES: a DINOv2 pass) counts against the budget too.
        budget = max(DEFAULT_BUDGET_S - (time.monotonic() - started), _MIN_BUDGET_S)
        reranked = self.rerank.rerank(search_round.reranker, search_round.prepared,
                                      search_round.shortlist, cancel, budget_s=budget,
                                      global_scores=self._global_scores(search_round))
        if not reranked.complete:
            search_round.notes.append(_STOPPED_EARLY)
        return self._reranked_hits(search_round, reranked)

    def more_like(self, photo_id: int, top_k: int, folder: Path | None = None
                  ) -> list[SearchHit]:
        """Photos like one already in the library, from its stored vector."""
        vec = self.vectors.rows.one(photo_id)
        if vec is None:
            raise QueryError("That photo has no embedding yet; index it first.")
        return self.search_vector(vec, top_k, folder)

    def search_vector(self, vec: np.ndarray, top_k: int, folder: Path | None = None
                      ) -> list[SearchHit]:
        allowed = self.catalog.ids_under(folder) if folder is not None else None
        ids, scores = self._global(vec, top_k, allowed)
        return self._hits(list(zip(ids, scores, strict=True)),
                          dict(zip(ids, scores, strict=True)))

    # Pieces -------------------------------------------------------------------------------

    def _vector_or_none(self, query: Query, notes: list[str]) -> np.ndarray | None:
        """The global vector; None for an image query when no model is installed."""
        if self.models.weights_present():
            return self.query_vector(query)
        positive, _ = split_negatives(query.text)
        if query.image is None or positive or self.local.mode is None:
            raise ModelUnavailable(
                f"Searching by description needs the model {self.models.model_id}, which "
                "is not installed (imagesearch models download).")
        notes.append("the model is not installed: results come from local features only")
        return None

    def _global(self, vec: np.ndarray | None, k: int, allowed: np.ndarray | None
                ) -> tuple[list[int], list[float]]:
        if vec is None:
            return [], []
        return search_index(self.vectors.index(), vec, k, allowed)

    def _keypoints(self, query: Query, notes: list[str], required: bool) -> Any:
        """The query image's local features (as the "sp" re-ranker prepares them), or None.

        Raises:
            QueryError: the image is unusable and nothing else can answer (``required``).
        """
        sp = self.rerank.get("sp")
        if sp is None or query.image is None:
            return None
        try:
            keypoints = self.rerank.prepare(sp, query.image)
        except ValueError as exc:
            if required:
                raise QueryError(f"Cannot use that image: {exc}") from exc
            notes.append(f"the image cannot be matched in detail: {exc}")
            return None
        if keypoints.n == 0:
            notes.append("the image has no distinctive details to match: "
                         "results from the overall look only")
            return None
        return keypoints

    def _local(self, prepared: Any, k: int, allowed: np.ndarray | None, notes: list[str]
               ) -> list[tuple[int, float]]:
        """The weight-free shortlist: ASMK, or every photo of a small library."""
        result = self.local.shortlist(prepared.plain, k, allowed)
        if result is not None:
            ids, scores = result
            return [(int(i), float(s)) for i, s in zip(ids, scores, strict=True)]
        extractor = self.local.extractor
        if extractor is None or (self.local.compact and self.models.weights_present()):
            return []  # (a compact library verifies the model's shortlist)
        have = self.catalog.feature_ids(extractor)
        if allowed is not None:
            have = np.intersect1d(have, allowed)
        if len(have) > 4 * MIN_PHOTOS and self.local.compact:
            notes.append("a compact library keeps no index of photo details: search by "
                         "image needs the model installed")
            return []
        if len(have) > 4 * MIN_PHOTOS:
            building = self.local.refresh_later()  # the index is missing or being built
            notes.append(("the index of photo details is still being built; until it is ready, "
                          if building else
                          "the index of photo details is not built yet (an `imagesearch "
                          "index` run builds it); until then, ")
                         + ("only the overall look finds candidates"
                            if self.models.weights_present() else
                            "search by image finds nothing"))
            return []
        return [(int(i), 0.0) for i in have]

    def _global_scores(self, search_round: SearchRound) -> dict[int, float]:
        """The global cosine of every shortlisted photo (those the local shortlist added
        have none yet: their stored vectors give it); empty without a query vector."""
        if search_round.vector is None:
            return {}
        scores = dict(search_round.global_scores)
        query = search_round.vector.astype(np.float32)
        # Few: the global shortlist already covers most of the merged one.
        for pid in [p for p, _ in search_round.shortlist if p not in scores]:
            stored = self.vectors.rows.one(pid)
            if stored is not None:
                scores[pid] = float(stored @ query) / max(float(np.linalg.norm(stored)), 1e-12)
        return scores

    def _reranker(self, query: Query, rerank: bool | None, using: str | None,
                  notes: list[str], every_note: bool = False) -> Reranker | None:
        if query.image is None or rerank is False:
            return None
        name = using or RERANKER_FOR_SETTING.get(self.settings.rerank)
        if name is None and rerank is None:
            return None  # re-ranking is off in the settings
        if using is not None:
            return self.rerank.get(using)
        chosen = self.rerank.get(name or "sp")
        if chosen is None and name == "ames":
            # AMES chosen but not available (no weights): spatial verification stands in.
            if self.rerank_note and (every_note or not self._noted):
                self._noted = self._noted or not every_note
                notes.append(f"{self.rerank_note}: using spatial verification instead")
            chosen = self.rerank.get("sp")
        return chosen

    def _reranked_hits(self, search_round: SearchRound, reranked: Reranked
                       ) -> list[SearchHit]:
        top_k = search_round.query.top_k
        out: list[tuple[int, float]] = list(zip(reranked.ids, reranked.scores, strict=True))
        # Beyond the shortlist the first order continues, on the fused scale: below the
        # shortlist's lowest, in proportion to the first scores (which are another scale).
        seen = set(reranked.ids)
        rest = [(h.photo_id, h.score) for h in search_round.hits if h.photo_id not in seen]
        if rest:
            floor = max(min(reranked.scores, default=0.0), 0.0)
            top = max(rest[0][1], 1e-12)
            out += [(pid, floor * min(max(score, 0.0) / top, 1.0)) for pid, score in rest]
        return self._hits(out[:top_k], search_round.global_scores, reranked)

    def _hits(self, found: Sequence[tuple[int, float]], global_scores: dict[int, float],
              reranked: Reranked | None = None) -> list[SearchHit]:
        return hits_of(found, self.catalog.photos([i for i, _ in found]), global_scores,
                       reranked.evidence if reranked is not None else None)


def query_vector(encoder: Encoder, query: Query,
                 image_vector: Callable[[Path | bytes], np.ndarray] | None = None
                 ) -> np.ndarray:
    """The L2-normalised vector a query stands for: its image's and its description's,
    weighted, pushed away from its "-" terms.

    Args:
        image_vector: the vector of the query's image (required when it has one).

    Raises:
        QueryError: nothing to search for.
    """
    positive, negatives = split_negatives(query.text)
    parts: list[tuple[float, np.ndarray]] = []
    if query.image is not None:
        assert image_vector is not None, "an image query needs image_vector"
        parts.append((query.image_weight if positive else 1.0, image_vector(query.image)))
    if positive:
        weight = 1.0 - query.image_weight if query.image is not None else 1.0
        parts.append((weight, encoder.encode_texts([positive])[0]))
    if not parts:
        raise QueryError("Type a description or drop an image to search."
                         if not negatives else
                         "A search needs something to look for, not only '-' terms.")
    vec = sum(w * v for w, v in parts)
    vec = np.asarray(vec, dtype=np.float32)
    vec /= max(float(np.linalg.norm(vec)), 1e-12)
    if negatives:
        neg = encoder.encode_texts(negatives).mean(axis=0)
        vec = vec - NEGATIVE_WEIGHT * neg
        vec /= max(float(np.linalg.norm(vec)), 1e-12)
    return vec


def search_index(index: VectorIndex | None, vec: np.ndarray, k: int,
                 allowed: np.ndarray | None) -> tuple[list[int], list[float]]:
    """The ``k`` nearest photos of ``vec`` (among ``allowed``), best first: (ids, scores)."""
    if index is None or len(index) == 0:
        return [], []
    scores, ids = index.search(vec[None].astype(np.float32), k, allowed)
    found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
    return [i for i, _ in found], [s for _, s in found]


def hits_of(found: Sequence[tuple[int, float]], records: Mapping[int, PhotoRecord],
            global_scores: Mapping[int, float],
            evidence: Mapping[int, Evidence] | None = None) -> list[SearchHit]:
    """Hits for (photo id, score) pairs, in that order; a photo without a record (removed
    between the search and the lookup) is left out."""
    hits = []
    for pid, score in found:
        r = records.get(pid)
        if r is None:
            continue
        seen = evidence.get(pid) if evidence is not None else None
        box = Box(*seen.box) if seen is not None and seen.box else None
        hits.append(SearchHit(
            photo_id=pid, path=r.path, score=score, width=r.width, height=r.height,
            size=r.size, captured_at=r.captured_at, mtime=r.mtime, box=box,
            global_score=global_scores.get(pid),
            rerank_score=seen.strength if seen is not None else None))
    return hits


def _candidates(first: list[tuple[int, float]], local: list[tuple[int, float]]
                ) -> list[tuple[int, float]]:
    """What the re-ranker sees: the first order's shortlist, then the local shortlist's
    other photos; scored by that position, so photos left unverified keep their order."""
    ids = list(dict.fromkeys([pid for pid, _ in first] + [pid for pid, _ in local]))
    n = max(len(ids), 1)
    return [(pid, 1.0 - i / n) for i, pid in enumerate(ids)]


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
