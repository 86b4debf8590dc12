"""Building the index family a library has grown (or shrunk) into, while search goes on.

The catalog is read and the new index trained without any lock that a search or a
commit needs. Commits made meanwhile are journalled; at the hand-over they are replayed
onto the new index, under the store's lock, so it misses nothing. Replaying a commit the
catalog read already held is harmless: a commit sets ids to vectors or removes them, so
the last journalled change of an id decides its value either way.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from imagesearch.core.index_family import (
    FLAT,
    IVF_PQ,
    Plan,
    calibrate_nprobe,
    train_ivf,
    worth_it,
)
from imagesearch.core.index_file import Change
from imagesearch.core.vector_index import VectorIndex
from imagesearch.services.stored_vectors import StoredVectors

log = logging.getLogger(__name__)


@dataclass
class Upgrade:
    """One rebuild in progress: what it replaces, what it builds, and the commits since."""

    base: VectorIndex
    plan: Plan
    journal: list[Change] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    seconds: float = 0.0
    recall: float | None = None  # recall@10 the calibration reached (IVF families)


def build(upgrade: Upgrade, rows: StoredVectors) -> VectorIndex | None:
    """The new index from the catalog's vectors, not yet caught up with the journal.

    None if cancelled, if the catalog holds no vectors any more, or if the plan was
    IVF-PQ and the library is no longer compact.
    """
    started = time.perf_counter()
    model_id = rows.model_id
    codec = rows.codec() if upgrade.plan.family == IVF_PQ else None
    ids, vectors = rows.all()
    if upgrade.cancelled.is_set() or len(ids) == 0 or (
            upgrade.plan.family == IVF_PQ and codec is None):
        return None
    base = upgrade.base
    if upgrade.plan.family == FLAT:
        index = VectorIndex.build(ids, vectors, base.dim, model_id, base.generation)
    else:
        trained, trained_on = train_ivf(vectors) if codec is None else train_ivf(
            vectors, codes=codec.centres)
        if upgrade.cancelled.is_set():
            return None
        index = VectorIndex.from_trained(trained, ids, vectors, model_id, base.generation,
                                         0, trained_on, upgrade.plan.family)
        index.nprobe, index.recall = calibrate_nprobe(trained, ids, vectors)
        upgrade.recall = index.recall
        if not worth_it(index.nprobe, int(trained.nlist)):
            kept = "exact search" if base.family == FLAT else "the current lists"
            log.warning("inverted lists for %d photos reach recall@10 %.3f only with %d of "
                        "%d lists probed: keeping %s", len(ids), index.recall,
                        index.nprobe, trained.nlist, kept)
            # Remembered, so it is not retried until the library is 4x this size.
            base.refused_at = len(ids)
            if base.family != FLAT:
                return None
            index = VectorIndex.build(ids, vectors, base.dim, model_id, base.generation)
            index.trained_on = len(ids)  # kept in the file: a restart does not retry it
            upgrade.plan = Plan(FLAT, "approximate lists would not reach the recall target")
    upgrade.seconds = time.perf_counter() - started
    return None if upgrade.cancelled.is_set() else index


def catch_up(upgrade: Upgrade, index: VectorIndex) -> VectorIndex:
    """Replay the journal onto ``index``; call under the store's lock, just before the swap."""
    for change in upgrade.journal:
        index.apply(change)
    index.generation = upgrade.base.generation
    log.info("search index for %s is now %s (%s), built in %.1f s%s", index.model_id,
             index.family, upgrade.plan.reason, upgrade.seconds,
             "" if upgrade.recall is None else
             f"; recall@10 {upgrade.recall:.3f} at {index.nprobe} lists probed")
    return index
