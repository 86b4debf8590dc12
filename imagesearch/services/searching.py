"""Search: a description, an image, or both, against the index."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from imagesearch.core.imaging import load_query_image
from imagesearch.domain import Query, SearchHit
from imagesearch.errors import QueryError
from imagesearch.services.models import ModelManager
from imagesearch.services.vector_store import VectorStore
from imagesearch.storage.catalog import Catalog

# How strongly a "-term" pushes results away, relative to the positive query.
NEGATIVE_WEIGHT = 0.5

_NEGATIVE = re.compile(r'(?:(?<=\s)|^)-(?:"([^"]+)"|(\S+))')


def split_negatives(text: str) -> tuple[str, list[str]]:
    """'cat on a sofa -dog -"red ball"' to ('cat on a sofa', ['dog', 'red ball'])."""
    negatives = [a or b for a, b in _NEGATIVE.findall(text)]
    positive = " ".join(_NEGATIVE.sub(" ", text).split())
    return positive, [n for n in negatives if n.strip()]


class SearchService:
    """Turns a query into a vector and the index's nearest photos into hits."""

    def __init__(self, catalog: Catalog, models: ModelManager, vectors: VectorStore) -> None:
        self.catalog = catalog
        self.models = models
        self.vectors = vectors

    def query_vector(self, query: Query) -> np.ndarray:
        """The L2-normalised vector a query stands for.

        Raises:
            QueryError: nothing to search for, or the query image is unreadable.
        """
        encoder = self.models.encoder()
        positive, negatives = split_negatives(query.text)
        parts: list[tuple[float, np.ndarray]] = []
        if query.image is not None:
            parts.append((query.image_weight if positive else 1.0,
                          self._image_vector(query.image)))
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

    def _image_vector(self, image: Path | bytes) -> np.ndarray:
        encoder = self.models.encoder()
        if isinstance(image, Path):
            # A photo already in the library: its stored vector, no decode needed.
            record = self.catalog.photo_by_path(image)
            if record is not None and record.mtime == _mtime(image):
                stored = self.catalog.vector(record.id, encoder.model_id)
                if stored is not None:
                    return stored / max(float(np.linalg.norm(stored)), 1e-12)
        try:
            pixels = load_query_image(image, encoder.spec)
        except ValueError as exc:
            raise QueryError(f"Cannot use that image: {exc}") from exc
        return np.asarray(encoder.encode_images(pixels[None])[0], dtype=np.float32)

    def search(self, query: Query) -> list[SearchHit]:
        vec = self.query_vector(query)
        return self.search_vector(vec, query.top_k, query.folder)

    def more_like(self, photo_id: int, top_k: int, folder: Path | None = None
                  ) -> list[SearchHit]:
        """Photos like one already in the library, from its stored vector."""
        vec = self.catalog.vector(photo_id, self.models.model_id)
        if vec is None:
            raise QueryError("That photo has no embedding yet; index it first.")
        return self.search_vector(vec, top_k, folder)

    def search_vector(self, vec: np.ndarray, top_k: int, folder: Path | None = None
                      ) -> list[SearchHit]:
        index = self.vectors.index()
        if index is None or len(index) == 0:
            return []
        allowed = self.catalog.ids_under(folder) if folder is not None else None
        scores, ids = index.search(vec[None].astype(np.float32), top_k, allowed)
        found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
        records = self.catalog.photos([i for i, _ in found])
        hits = []
        for pid, score in found:
            r = records.get(pid)
            if r is None:
                continue  # removed between the search and this lookup
            hits.append(SearchHit(photo_id=pid, path=r.path, score=score, width=r.width,
                                  height=r.height, size=r.size, captured_at=r.captured_at,
                                  mtime=r.mtime))
        return hits


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
