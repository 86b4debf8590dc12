"""AMES in the app, with tiny random checkpoints installed through the model manager:
index-time extraction (resumable, cancellable), re-ranking with fusion and boxes, damaged
records, missing weights, the CLI's listing. Rankings are meaningless (random weights);
the paths are real."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from imagesearch.config import Settings
from imagesearch.domain import IndexProgress, Query
from imagesearch.services.ames import PHASE
from tests.ames_random import write_tiny_ames
from tests.tiny_model import TINY_MODEL_ID

MAX_SIDE = 224  # the tiny backbone at a small size keeps each photo to milliseconds


@pytest.fixture(scope="module")
def ames_models(tmp_path_factory: pytest.TempPathFactory,
                tiny_checkpoint: tuple[Path, Path]) -> Path:
    """A models folder with the tiny CLIP model and the tiny AMES checkpoints, installed
    as a user would (ModelManager.install)."""
    from imagesearch.core.ames.registry import BACKBONE, DETECTOR, MATCHER_DIST
    from imagesearch.services.models import ModelManager

    root = tmp_path_factory.mktemp("ames-models")
    manager = ModelManager(Settings(models_dir=root, model_id=TINY_MODEL_ID))
    manager.install(tiny_checkpoint[0], TINY_MODEL_ID, tiny_checkpoint[1])
    files = write_tiny_ames(tmp_path_factory.mktemp("ames-files"))
    for weight, path in zip((BACKBONE, DETECTOR, MATCHER_DIST), files, strict=True):
        manager.install(path, weight.id)
    return root


@pytest.fixture
def ames_ctx(make_settings: Callable[..., Settings], ames_models: Path, shared_encoder,  # type: ignore[no-untyped-def]
             monkeypatch: pytest.MonkeyPatch):
    import imagesearch.services.ames as ames_service
    from imagesearch.services.context import build_context

    monkeypatch.setattr(ames_service, "DEFAULT_MAX_SIDE", MAX_SIDE)
    original = ames_service.AmesService.__init__

    def small(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["max_side"] = MAX_SIDE
        original(self, *args, **kwargs)

    monkeypatch.setattr(ames_service.AmesService, "__init__", small)
    ctx = build_context(make_settings(models_dir=ames_models, rerank="ames"),
                        encoder=shared_encoder)
    yield ctx
    ctx.close()


def _records(ctx) -> dict[int, bytes]:  # type: ignore[no-untyped-def]
    ids = [int(i) for i in ctx.catalog.vector_ids(ctx.models.model_id)]
    return ctx.catalog.features(ids, ctx.ames.extractor)


def test_indexing_extracts_ames_descriptors(ames_ctx, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from imagesearch.core.ames.codec import decode_record

    assert ames_ctx.ames.available and ames_ctx.rerank.get("ames") is not None
    phases: list[IndexProgress] = []
    ames_ctx.library.add_folder(photo_dir)
    report = ames_ctx.indexing.run(progress=phases.append)
    assert report.added == 6 and not report.warnings
    records = _records(ames_ctx)
    assert len(records) == 6 and ames_ctx.ames.pending() == 0
    for blob in records.values():
        rec = decode_record(blob)
        assert len(rec) == 80 and len(blob) <= 1600
        assert max(rec.grid) * 14 == MAX_SIDE
    ames = [p for p in phases if p.phase == PHASE]
    assert ames and ames[-1].done == ames[-1].total == 6
    assert ames_ctx.indexing.run().added == 0  # nothing to do again
    assert len(_records(ames_ctx)) == 6


def test_backfill_resumes_after_cancel(ames_ctx, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    ames_ctx.indexing.followups.clear()  # index first, extract afterwards: a backfill
    ames_ctx.library.add_folder(photo_dir)
    ames_ctx.indexing.run()
    assert ames_ctx.ames.pending() == 6
    cancel = threading.Event()
    stored = ames_ctx.ames.backfill(lambda p: cancel.set(), cancel)
    assert 0 < stored < 6 and ames_ctx.ames.pending() == 6 - stored
    assert ames_ctx.ames.backfill() == 6 - stored
    assert ames_ctx.ames.pending() == 0 and len(_records(ames_ctx)) == 6


def test_image_query_is_reranked_and_fused(ames_ctx, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    ames_ctx.library.add_folder(photo_dir)
    ames_ctx.indexing.run()
    target = photo_dir / "trip" / "coffee.jpg"
    search_round = ames_ctx.search.begin(Query(image=target, top_k=6))
    assert search_round.reranker is not None and search_round.reranker.name == "ames"
    assert search_round.prepared is None and search_round.prepare_later  # not in begin()
    hits = search_round.refine()
    assert len(hits) == 6 and all(h.rerank_score is not None for h in hits)
    variant = ames_ctx.models.ames_variant()
    for h in hits:
        match = 1.0 / (1.0 + math.exp(-variant.gamma * h.rerank_score))
        expected = variant.lam * h.global_score + (1.0 - variant.lam) * match
        assert h.score == pytest.approx(expected, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for h in hits:
        if h.box is not None:  # in the photo's upright pixels
            assert 0 <= h.box.x0 < h.box.x1 <= h.width and 0 <= h.box.y0 < h.box.y1 <= h.height


def test_damaged_record_is_dropped_then_recomputed(ames_ctx, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    ames_ctx.library.add_folder(photo_dir)
    ames_ctx.indexing.run()
    records = _records(ames_ctx)
    victim = sorted(records)[0]
    record = ames_ctx.catalog.photos([victim])[victim]
    ames_ctx.catalog.store_features(ames_ctx.ames.extractor,
                                    [(victim, record.content_hash, 80, b"AM\x01broken")])
    hits = ames_ctx.search.search(Query(image=photo_dir / "trip" / "coffee.jpg", top_k=6))
    assert len(hits) == 6
    assert victim not in _records(ames_ctx)  # dropped by the search that met it
    assert ames_ctx.ames.backfill() == 1 and victim in _records(ames_ctx)


def test_changed_photo_gets_new_descriptors(ames_ctx, photo_dir: Path, write_photo) -> None:  # type: ignore[no-untyped-def]
    ames_ctx.library.add_folder(photo_dir)
    ames_ctx.indexing.run()
    path = photo_dir / "trip" / "coffee.jpg"
    before = ames_ctx.catalog.photo_by_path(path)
    old = _records(ames_ctx)[before.id]
    write_photo(path, "rocket")
    ames_ctx.indexing.run()
    after = ames_ctx.catalog.photo_by_path(path)
    assert after.content_hash != before.content_hash
    assert _records(ames_ctx)[after.id] != old and ames_ctx.ames.pending() == 0


def test_unusable_query_image_keeps_the_first_hits(ames_ctx, photo_dir: Path,  # type: ignore[no-untyped-def]
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ames_ctx.library.add_folder(photo_dir)
    ames_ctx.indexing.run()
    reranker = ames_ctx.rerank.get("ames")

    def refuse(image: object) -> None:
        raise ValueError("corrupt or truncated image data")

    monkeypatch.setattr(reranker, "prepare", refuse)
    search_round = ames_ctx.search.begin(Query(image=photo_dir / "trip" / "coffee.jpg", top_k=4))
    assert search_round.refine() == search_round.hits
    assert any("cannot be re-ranked" in n for n in search_round.notes)


def test_time_budget_leaves_the_order(ames_ctx, photo_dir: Path) -> None:  # type: ignore[no-untyped-def]
    ames_ctx.library.add_folder(photo_dir)
    ames_ctx.indexing.run()
    reranker = ames_ctx.rerank.get("ames")
    query = reranker.prepare(photo_dir / "trip" / "coffee.jpg")
    shortlist = [(int(i), 1.0 - 0.1 * n)
                 for n, i in enumerate(ames_ctx.catalog.vector_ids(ames_ctx.models.model_id))]
    late = ames_ctx.rerank.rerank(reranker, query, shortlist, budget_s=-1.0)
    assert not late.complete and late.ids == [i for i, _ in shortlist]
    cancelled = threading.Event()
    cancelled.set()
    assert not ames_ctx.rerank.rerank(reranker, query, shortlist, cancelled).complete


def test_without_weights_spatial_verification_stands_in(make_settings, shared_encoder,  # type: ignore[no-untyped-def]
                                                         photo_dir: Path) -> None:
    from imagesearch.services.context import build_context

    ctx = build_context(make_settings(rerank="ames"), encoder=shared_encoder)
    try:
        assert not ctx.ames.available and ctx.rerank.get("ames") is None
        assert ctx.indexing.followups == []  # nothing extracted without weights
        ctx.library.add_folder(photo_dir)
        ctx.indexing.run()
        first = ctx.search.begin(Query(image=photo_dir / "trip" / "coffee.jpg", top_k=3))
        assert first.reranker is not None and first.reranker.name == "sp"
        assert any("AMES weights are not installed" in n and "spatial verification" in n
                   for n in first.notes)
        second = ctx.search.begin(Query(image=photo_dir / "trip" / "coffee.jpg", top_k=3))
        assert not any("AMES" in n for n in second.notes)  # said once
        # A command-line search answered by this process sees only its own round.
        remote = ctx.search.begin(Query(image=photo_dir / "trip" / "coffee.jpg", top_k=3),
                                  every_note=True)
        assert any("AMES weights are not installed" in n for n in remote.notes)
    finally:
        ctx.close()


def test_models_list_and_offline_download(ames_models: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from imagesearch.cli.main import main

    library = tmp_path / "lib"
    library.mkdir()
    (library / "settings.json").write_text(json.dumps({"model_id": TINY_MODEL_ID,
                                                       "rerank": "ames"}))
    monkeypatch.setenv("IMAGESEARCH_HOME", str(library))
    monkeypatch.setenv("IMAGESEARCH_MODELS", str(tmp_path / "empty-models"))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("ames/dinov2-vitb14-reg4", "ames/dinov2-detector", "ames/dinov2-ames-dist",
                 "ames/dinov2-ames"):
        assert name in out
    assert "dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth" in out
    assert "sumapave/public/ames/networks/dinov2_ames_dist.pt" in out
    assert main(["models", "download", "ames"]) == 1  # HF_HUB_OFFLINE=1 in the tests
    err = capsys.readouterr().err
    assert "ames/dinov2-vitb14-reg4" in err and "switched off" in err and err[-1] == "\n"


def test_download_records_the_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import http.server

    from imagesearch.core.weights import WeightStore

    body = np.random.default_rng(0).bytes(300_000)

    class Host(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return None

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()

        def do_GET(self) -> None:
            self.do_HEAD()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Host)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen: list[tuple[int, int]] = []
    try:
        got = WeightStore(tmp_path).download_file(
            "ames/dinov2-detector", f"http://127.0.0.1:{server.server_address[1]}/d.pt",
            "dinov2_detector.pt", lambda done, total: seen.append((done, total)))
    finally:
        server.shutdown()
        server.server_close()
    assert got.sha256 == hashlib.sha256(body).hexdigest() and got.path.read_bytes() == body
    assert seen[-1] == (len(body), len(body))
