"""Composition: the one place that builds the catalog, models and services from Settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from imagesearch.config import Settings
from imagesearch.core.encoder import Encoder
from imagesearch.core.rerank import Reranker
from imagesearch.core.spatial_rerank import SpatialReranker
from imagesearch.domain import Query, SearchHit
from imagesearch.services.ames import AmesService
from imagesearch.services.indexing import IndexingService
from imagesearch.services.library import LibraryService
from imagesearch.services.local_search import LocalIndexService
from imagesearch.services.models import ModelManager
from imagesearch.services.query_server import QueryServer
from imagesearch.services.reranking import RerankService
from imagesearch.services.searching import SearchService
from imagesearch.services.vector_store import SAVE_DELAY_S, VectorStore
from imagesearch.services.write_lane import WriteLane
from imagesearch.storage.catalog import Catalog
from imagesearch.storage.database import open_catalog_engine


@dataclass
class AppContext:
    """Everything a front end needs, built once at start-up."""

    settings: Settings
    catalog: Catalog
    models: ModelManager
    vectors: VectorStore
    lane: WriteLane
    library: LibraryService
    indexing: IndexingService
    search: SearchService
    local: LocalIndexService
    rerank: RerankService
    ames: AmesService
    server: QueryServer | None = None
    # Threads still running after close()'s bounded waits: a process should then exit
    # without waiting for them (they may be inside FAISS or ONNX Runtime).
    unfinished: list[str] = field(default_factory=list)

    def serve_queries(self) -> bool:
        """Answer command-line searches for this library from this process until closed."""
        if self.server is None:
            def answer(query: Query, rerank: bool | None, shortlist: int | None
                       ) -> tuple[list[SearchHit], list[str]]:
                search_round = self.search.begin(query, rerank=rerank, shortlist=shortlist,
                                                 every_note=True)
                hits = search_round.refine(server.stopping)  # closing cancels it
                return hits, search_round.notes

            server = QueryServer(self.settings.library_dir, self.models.model_id, answer)
            self.server = server if server.start() else None
        return self.server is not None

    def update_settings(self, settings: Settings) -> None:
        """Settings that need no reopening (results per query, object matching, ...)."""
        self.settings = settings
        for service in (self.library, self.indexing, self.search):
            service.settings = settings

    def close(self) -> tuple[str, ...]:
        """Stop the workers, write the unsaved index, close the catalog; returns warnings."""
        if self.server is not None:
            if not self.server.stop():
                self.unfinished.append("a command-line search")
            self.server = None
        if not self.local.close():
            self.unfinished.append("the index of photo details")
        self.indexing.close()
        self.models.close()
        warnings = self.vectors.close()
        self.catalog.close()
        return warnings


def build_context(settings: Settings, encoder: Encoder | None = None,
                  save_delay_s: float = SAVE_DELAY_S,
                  models: ModelManager | None = None, background: bool = True
                  ) -> AppContext:
    """Open the catalog (creating or migrating it) and wire the services.

    Args:
        encoder: an already loaded encoder to use instead of loading settings.model_id.
        save_delay_s: how long the index file waits for changes to settle before it is
            written; 0 writes it after each change (for one-shot commands).
        models: a model manager made earlier (one already loading in the background).
        background: the local-feature index catches up on a thread of its own; False for
            a one-shot command, whose handler refreshes it in the foreground.

    Raises:
        CatalogTooNew, CatalogError: the catalog cannot be used.
    """
    settings.library_dir.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(open_catalog_engine(settings.catalog_path))
    models = models or ModelManager(settings, encoder)
    vectors = VectorStore(catalog, settings.index_dir, models.model_id, save_delay_s,
                          memory_mb=settings.index_memory_mb, background=background)
    lane = WriteLane()
    local = LocalIndexService(settings, catalog, background=background)
    rerankers: list[Reranker] = []
    if local.mode is not None:
        rerankers.append(SpatialReranker(local.mode.extractor_id))
    ames = AmesService(settings, catalog, models, lane)
    if ames.available:
        # Loaded lazily, on the first query or backfill, never here.
        rerankers.append(ames.reranker())
    rerank = RerankService(catalog, rerankers)
    indexing = IndexingService(settings, catalog, models, vectors, lane, local)
    if ames.available:
        indexing.followups.append(ames.backfill)
    search = SearchService(settings, catalog, models, vectors, local, rerank)
    search.rerank_note = ames.unavailable_reason()
    return AppContext(
        settings=settings,
        catalog=catalog,
        models=models,
        vectors=vectors,
        lane=lane,
        library=LibraryService(settings, catalog, models, vectors, lane),
        indexing=indexing,
        search=search,
        local=local,
        rerank=rerank,
        ames=ames,
    )
