"""A description searched at once: a cold command's text query, without SQLAlchemy.

A cold ``imagesearch search`` for a description needs, of the whole library, only the
index file, the catalog's records of the hits and the text tower. Opening the library in
full (SQLAlchemy, every service) costs such a query about 0.2 s of its 0.8 on 2 cores
(``bench/cold_query.py``); this answers through ``CatalogReader`` instead, with the same
functions the app's ``SearchService`` uses, so the hits are the same.

It answers only when nothing needs more than reading: the catalog at the current schema,
the model's weights installed, and an index file that holds what the catalog does (a
compact library's codes decoded with its codec for that check, as ``StoredVectors`` does).
Anything else returns None, and the caller opens the library in full, which migrates,
rebuilds or says what is wrong as it always has. So does a catalog this cannot read
(locked past its timeout, damaged): the full path meets the same trouble and reports it
in its own words.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from imagesearch.config import Settings
from imagesearch.core.vector_codec import VectorCodec
from imagesearch.core.vector_index import VectorIndex, load_saved
from imagesearch.domain import Query, SearchHit
from imagesearch.errors import CatalogError, IndexFileError
from imagesearch.services.models import ModelManager
from imagesearch.services.searching import hits_of, query_vector, search_index
from imagesearch.services.stored_vectors import decoded
from imagesearch.services.vector_store import index_path, mismatch
from imagesearch.storage.catalog_reads import CatalogReader, UnreadableCatalog

log = logging.getLogger(__name__)


def answer_description(settings: Settings, models: ModelManager, query: Query,
                       shortlist: int | None = None) -> list[SearchHit] | None:
    """The hits of a query without an image, or None when only the full path can answer.

    Args:
        shortlist: candidates taken from the index (None: the settings'), as
            ``SearchService.begin`` takes them, so the first ``top_k`` are its own.

    Raises:
        QueryError: the description holds nothing to look for (only "-" terms).
    """
    if query.image is not None or not models.weights_present():
        return None
    reader = CatalogReader.open(settings.catalog_path)
    if reader is None:
        return None
    try:
        return _answer(settings, models, query, shortlist, reader)
    except UnreadableCatalog as exc:  # only the reads: a fault elsewhere is not hidden
        log.info("the catalog cannot be read at once (%s): opening the library", exc)
        return None
    finally:
        reader.close()


def current_index(reader: CatalogReader, index_dir: Path, model_id: str
                  ) -> VectorIndex | None:
    """The model's index file when it holds what the catalog does, else None (none yet,
    unreadable, or behind the catalog: the full path rebuilds it).

    Raises:
        UnreadableCatalog: the catalog could not be read.
    """
    digest = reader.vector_codec_digest(model_id)
    read: Callable[[np.ndarray], np.ndarray]
    if digest is None:
        read = functools.partial(reader.vectors_of, model_id)
    else:  # a compact library: its codes, decoded as StoredVectors decodes them
        row = reader.vector_codec(model_id)
        if row is None or row[2] != digest:
            return None  # coded or made standard meanwhile
        try:
            codec = VectorCodec.from_bytes(row[1])
        except CatalogError:
            return None  # damaged: the full path says what to do

        def read(ids: np.ndarray) -> np.ndarray:
            return decoded(codec, reader.vectors_of(model_id, ids, codec.parts))

    def stored(ids: np.ndarray) -> np.ndarray:
        """``read``, valid only while the vectors keep the kind they had: another process
        coding the library, or making it standard, makes them unreadable as before
        (KeyError: ``mismatch`` then says the catalog changed)."""
        try:
            values = read(ids)
        except ValueError as exc:
            if reader.vector_codec_digest(model_id) != digest:
                raise KeyError("the vectors changed kind while they were read") from exc
            raise UnreadableCatalog(f"a damaged vector: {exc}") from exc
        if reader.vector_codec_digest(model_id) != digest:
            raise KeyError("the vectors changed kind while they were read")
        return values

    generation = reader.generation()  # before the file, as VectorStore reads them
    try:
        index = load_saved(index_path(index_dir, model_id)).index
    except IndexFileError:
        return None
    reason = mismatch(index, model_id, generation, lambda: reader.vector_ids(model_id),
                      stored)
    if reason is not None:
        log.info("the index file cannot answer at once (%s): opening the library", reason)
        return None
    return index


def _answer(settings: Settings, models: ModelManager, query: Query, shortlist: int | None,
            reader: CatalogReader) -> list[SearchHit] | None:
    index = current_index(reader, settings.index_dir, models.model_id)
    if index is None:
        return None
    vector = query_vector(models.encoder(), query)
    allowed = reader.ids_under(query.folder) if query.folder is not None else None
    k = max(shortlist or settings.shortlist, query.top_k, 1)
    ids, scores = search_index(index, vector, k, allowed)
    found = list(zip(ids, scores, strict=True))[:query.top_k]
    return hits_of(found, reader.photos([i for i, _ in found]),
                   dict(zip(ids, scores, strict=True)))
