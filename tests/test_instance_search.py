"""Instance search end to end: local features at index time, the weight-free shortlist,
re-ranking with boxes, the backfill of an existing library, and damaged records."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagesearch.config import Settings
from imagesearch.domain import Query
from imagesearch.errors import ModelUnavailable
from tests.conftest import noise_jpeg, skimage_photo
from tests.instance_scenes import coffee_scenes, iou, save, scene, similarity
from tests.test_crash_safety import REPO, Library, kill, wait_until
from tests.tiny_model import TINY_MODEL_ID

OBJECT = skimage_photo("astronaut")


@pytest.fixture
def scenes(tmp_path: Path) -> tuple[Path, dict[str, tuple[float, float, float, float]]]:
    """Photos with the astronaut somewhere (true boxes known) among clutter."""
    root = tmp_path / "photos"
    truth = {}
    for i, (scale, turn, mirror) in enumerate([(0.5, 20, False), (0.6, 180, False),
                                               (0.5, -30, True)]):
        pixels, box = scene(OBJECT, similarity(scale, turn, 420, 300, (256, 256)),
                            (800, 600), mirror=mirror, seed=i)
        truth[f"with-{i}.jpg"] = box
        save(pixels, root / f"with-{i}.jpg")
    for i in range(5):
        other = skimage_photo(("coffee", "rocket", "chelsea", "camera", "coins")[i])
        pixels, _ = scene(other, similarity(0.7, 10 * i, 400, 300,
                                            (other.shape[1] / 2, other.shape[0] / 2)),
                          (800, 600), seed=10 + i)
        save(pixels, root / f"without-{i}.jpg")
    return root, truth


@pytest.fixture
def no_weights(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    return make_settings(models_dir=tmp_path / "no-models")


def open_ctx(settings: Settings, encoder: Any = None) -> Any:
    from imagesearch.services.context import build_context

    return build_context(settings, encoder=encoder, save_delay_s=0.0)


def test_image_query_finds_the_object_and_says_where(context: Any, scenes: Any,
                                                     tmp_path: Path) -> None:
    root, truth = scenes
    context.library.add_folder(root)
    report = context.indexing.run()
    assert report.added == 8 and report.failed == 0
    n, total = context.catalog.feature_bytes(context.local.extractor)
    assert n == 8 and total / n <= 2048  # the compact mode's promise
    query = save(OBJECT, tmp_path / "query.jpg")
    search_round = context.search.begin(Query(image=query, top_k=8))
    assert search_round.can_refine and not search_round.notes
    hits = search_round.refine()
    found = {h.path.name: h for h in hits[:3]}
    assert set(found) == set(truth), [h.path.name for h in hits]
    for name, hit in found.items():
        assert hit.box is not None and iou(hit.box.as_list(), truth[name]) >= 0.6
        assert hit.rerank_score is not None and hit.rerank_score >= 4
        assert hit.global_score is not None
    assert all(h.box is None for h in hits[3:])


def test_without_the_model_photos_are_indexed_for_search_by_image(
        no_weights: Settings, scenes: Any, tmp_path: Path, models_dir: Path,
        shared_encoder: Any) -> None:
    root, truth = scenes
    ctx = open_ctx(no_weights)
    try:
        assert not ctx.models.weights_present() and ctx.indexing.can_index()
        ctx.library.add_folder(root)
        report = ctx.indexing.run()
        assert report.added == 8 and any("not installed" in w for w in report.warnings)
        assert ctx.catalog.vector_ids(ctx.models.model_id).size == 0
        query = save(OBJECT, tmp_path / "query.jpg")
        search_round = ctx.search.begin(Query(image=query, top_k=8))
        assert any("local features only" in n for n in search_round.notes)
        hits = search_round.refine()
        assert {h.path.name for h in hits[:3]} == set(truth)
        assert all(h.global_score is None for h in hits)
        with pytest.raises(ModelUnavailable, match="needs the model"):
            ctx.search.begin(Query(text="an astronaut"))
    finally:
        ctx.close()
    # The weights arrive: the next run fills in the vectors and keeps the features.
    ctx = open_ctx(no_weights.with_changes(models_dir=models_dir), shared_encoder)
    try:
        report = ctx.indexing.run()
        assert (report.added, report.completed) == (0, 8)
        assert ctx.catalog.vector_ids(ctx.models.model_id).size == 8
        assert ctx.catalog.feature_ids(ctx.local.extractor).size == 8
        assert len(ctx.search.search(Query(text="an astronaut", top_k=3))) == 3
    finally:
        ctx.close()


def test_nothing_to_match_in_the_query_gives_global_results_with_a_note(
        context: Any, scenes: Any, tmp_path: Path) -> None:
    root, _ = scenes
    context.library.add_folder(root)
    context.indexing.run()
    flat = tmp_path / "flat.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (90, 90, 90)).save(flat)
    search_round = context.search.begin(Query(image=flat, top_k=5))
    assert not search_round.can_refine
    assert any("no distinctive details" in n for n in search_round.notes)
    assert len(search_round.refine()) == 5


def test_a_cancelled_refinement_keeps_the_first_order(context: Any, scenes: Any,
                                                      tmp_path: Path) -> None:
    root, _ = scenes
    context.library.add_folder(root)
    context.indexing.run()
    search_round = context.search.begin(Query(image=save(OBJECT, tmp_path / "q.jpg"),
                                              top_k=8))
    cancel = threading.Event()
    cancel.set()
    hits = search_round.refine(cancel)
    assert [h.photo_id for h in hits] == [h.photo_id for h in search_round.hits]
    assert all(h.box is None for h in hits)
    assert any("stopped early" in n for n in search_round.notes)


def test_a_damaged_feature_record_is_dropped_then_recomputed(
        context: Any, scenes: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, truth = scenes
    context.library.add_folder(root)
    context.indexing.run()
    target = context.library.photo(root / "with-0.jpg")
    with sqlite3.connect(context.settings.catalog_path) as conn:
        conn.execute("UPDATE local_features SET data = substr(data, 1, 30) "
                     "WHERE photo_id = ?", (target.id,))
    hits = context.search.search(Query(image=save(OBJECT, tmp_path / "q.jpg"), top_k=8))
    assert "damaged local-feature records dropped" in caplog.text
    assert target.id not in context.catalog.feature_ids(context.local.extractor)
    assert {h.path.name for h in hits[:2]} == set(truth) - {"with-0.jpg"}
    report = context.indexing.run()
    assert report.completed == 1
    assert target.id in context.catalog.feature_ids(context.local.extractor)


def test_the_local_index_follows_the_library(make_settings: Callable[..., Settings],
                                             shared_encoder: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from imagesearch.services import local_search

    monkeypatch.setattr(local_search, "MIN_PHOTOS", 8)
    settings = make_settings()
    root = tmp_path / "photos"
    coffee_scenes(root, 12)
    ctx = open_ctx(settings, shared_encoder)
    try:
        ctx.library.add_folder(root)
        ctx.indexing.run()
        # Indexing asked for a refresh in the background; this one waits for it.
        ctx.local.refresh()
        status = ctx.local.status()
        assert status.photos == 12 and status.words >= 2 and ctx.local.path.exists()
        query = query_features(skimage_photo("coffee"))
        ids, scores = ctx.local.shortlist(query, 5)  # type: ignore[misc]
        assert len(ids) == 5 and np.all(np.diff(scores) <= 0)
        (root / "c0.jpg").unlink()
        edited = root / "c1.jpg"
        before = ctx.library.photo(edited)
        pixels, _ = scene(skimage_photo("rocket"), similarity(0.5, 0, 300, 200, (214, 213)),
                          (640, 480), seed=99)
        save(pixels, edited)  # new bytes: its details are found again and re-indexed
        ctx.indexing.run()
        ctx.local.refresh()
        assert ctx.local.status().photos == 11
        after = ctx.library.photo(edited)
        assert after.id == before.id and after.content_hash != before.content_hash
        inverted = ctx.local._inverted
        assert inverted is not None and inverted.versions()[after.id] == after.content_hash
    finally:
        ctx.close()
    # Opened again: the file is read back, not rebuilt.
    ctx = open_ctx(settings, shared_encoder)
    try:
        assert not ctx.local.refresh() and ctx.local.status().photos == 11
    finally:
        ctx.close()


def test_details_of_earlier_versions_are_forgotten(
        settings: Settings, shared_encoder: Any, scenes: Any) -> None:
    root, _ = scenes
    ctx = open_ctx(settings, shared_encoder)
    try:
        ctx.library.add_folder(root)
        ctx.indexing.run()
        photo = ctx.library.photo(root / "with-0.jpg")
        current = ctx.local.extractor
        for old in ("sift-compact-384-160-pq8-v1", "sift-detailed-384-1000-pq16-v1",
                    "ames-dinov2-770-v1"):
            ctx.catalog.store_features(old, [(photo.id, photo.content_hash, 1, b"x")])
        index_dir = ctx.local.path.parent
        index_dir.mkdir(parents=True, exist_ok=True)
        (index_dir / "local-sift-compact-384-160-pq8-v1.npz").write_bytes(b"old")
    finally:
        ctx.close()
    ctx = open_ctx(settings, shared_encoder)  # the next run of a newer version
    try:
        ctx.indexing.run()
        with sqlite3.connect(settings.catalog_path) as conn:
            kinds = {row[0] for row in conn.execute("SELECT DISTINCT extractor "
                                                    "FROM local_features")}
        # The other mode's are kept (switching back is instant); AMES's descriptors are
        # another family, and cost far more to find again.
        assert kinds == {current, "sift-detailed-384-1000-pq16-v1", "ames-dinov2-770-v1"}
        assert not (index_dir / "local-sift-compact-384-160-pq8-v1.npz").exists()
        assert len(ctx.catalog.feature_ids(current)) == 8
    finally:
        ctx.close()


def test_a_refresh_cancelled_after_learning_keeps_nothing_half_built(
        make_settings: Callable[..., Settings], shared_encoder: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from imagesearch.services import local_search

    monkeypatch.setattr(local_search, "MIN_PHOTOS", 8)
    root = tmp_path / "photos"
    coffee_scenes(root, 10)
    ctx = open_ctx(make_settings(), shared_encoder)
    try:
        ctx.library.add_folder(root)
        ctx.indexing.run()
        ctx.local.close()  # the background refresh asked for by indexing: stopped at once
        service = local_search.LocalIndexService(ctx.settings, ctx.catalog, background=False)
        service.path.unlink(missing_ok=True)
        learn = service._train
        cancel = threading.Event()

        def learn_then_quit(photos: int, stop: Any) -> Any:
            inverted = learn(photos, None)
            cancel.set()  # the app closes while the vocabulary was being learned
            return inverted

        monkeypatch.setattr(service, "_train", learn_then_quit)
        assert not service.refresh(cancel=cancel)
        assert not service.path.exists() and service.status().photos == 0
        assert service.missing()  # so the next command builds it, rather than an empty one
    finally:
        ctx.close()


def query_features(pixels: np.ndarray) -> Any:
    from PIL import Image

    from imagesearch.core.local_features import QUERY_COUNT, QUERY_MAX_SIDE, extract

    return extract(Image.fromarray(pixels), QUERY_MAX_SIDE, QUERY_COUNT)


# The backfill of an existing library, killed and resumed -----------------------------------

@pytest.fixture
def library_without_features(tmp_path: Path, models_dir: Path,
                             shared_encoder: Any) -> Iterator[Library]:
    lib = Library(tmp_path, models_dir, shared_encoder)
    for i in range(60):
        noise_jpeg(lib.photos / f"p{i:03d}.jpg", i, size=96)
    settings = json.loads((lib.dir / "settings.json").read_text())
    (lib.dir / "settings.json").write_text(json.dumps({**settings, "local_features": "off"}))
    proc = lib.start()
    assert proc.wait(timeout=120) == 0
    (lib.dir / "settings.json").write_text(json.dumps({**settings,
                                                       "local_features": "compact"}))
    yield lib


def test_the_backfill_is_killed_and_resumed(library_without_features: Library) -> None:
    lib = library_without_features

    def features() -> int:
        rows = lib.sql("SELECT count(*) FROM local_features")
        return int(rows[0][0]) if rows else 0

    assert features() == 0
    proc = lib.start()
    killed = wait_until(proc, lambda: features() >= 8, timeout=60)
    if proc.poll() is None:
        kill(proc)
    assert killed, "the backfill never wrote a batch"
    partial = features()
    assert 8 <= partial < 60
    assert lib.sql("SELECT count(*) FROM photos WHERE status = 'indexed'") == [(60,)]
    proc = lib.start()
    out = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert proc.returncode == 0, out
    assert f"{60 - partial} completed" in out and "0 added" in out
    assert features() == 60
    assert lib.sql("SELECT count(DISTINCT photo_id) FROM local_features") == [(60,)]
    lib.check()
    # The one-shot `index` built the index of photo details before it exited (a
    # background refresh would have been cut short by the exit).
    built = list((lib.dir / "index").glob("local-*.asmk"))
    assert len(built) == 1
    built[0].unlink()  # lost (or made by an older version): `search` builds it first
    env = dict(os.environ, IMAGESEARCH_MODELS=str(lib.models_dir), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-m", "imagesearch.cli.main", "--library", str(lib.dir), "--model",
         TINY_MODEL_ID, "search", "--image", str(lib.photos / "p007.jpg"), "--json", "-k",
         "3"], cwd=REPO, env=env, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    assert "photo details once" in out.stderr.decode()
    hits = json.loads(out.stdout)
    assert Path(hits[0]["path"]).name == "p007.jpg" and hits[0]["rerank_score"] > 0
    assert built[0].exists()


def test_cli_search_with_boxes_as_json(context: Any, scenes: Any, tmp_path: Path,
                                       models_dir: Path) -> None:
    root, truth = scenes
    context.library.add_folder(root)
    context.indexing.run()
    library = context.settings.library_dir
    context.close()
    query = save(OBJECT, tmp_path / "q.jpg")

    def search(*extra: str) -> list[dict[str, Any]]:
        env = {"IMAGESEARCH_MODELS": str(models_dir), "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
        out = subprocess.run(
            [sys.executable, "-m", "imagesearch.cli.main", "--library", str(library),
             "--model", TINY_MODEL_ID, "search", "--image", str(query), "--json", "-k", "8",
             *extra], cwd=REPO, env=env, capture_output=True, timeout=120)
        assert out.returncode == 0, out.stderr.decode()
        result: list[dict[str, Any]] = json.loads(out.stdout)
        return result

    hits = search()
    boxed = {Path(h["path"]).name: h["box"] for h in hits if h["box"] is not None}
    assert set(boxed) == set(truth)
    for name, box in boxed.items():
        assert len(box) == 4 and iou(box, truth[name]) >= 0.6  # pixels of the photo
    assert all(h["box"] is None for h in search("--no-rerank"))
    assert len(search("--shortlist", "2")) == 8


def test_without_the_model_the_details_index_gives_a_deeper_shortlist(
        no_weights: Settings, context: Any, scenes: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ASMK's candidates are all that is verified when no model is installed: it gives
    weight_free_shortlist of them, the model's shortlist setting otherwise, and an explicit
    --shortlist wins in both."""
    root, _ = scenes
    query = Query(image=save(OBJECT, tmp_path / "q.jpg"), top_k=8)
    ctx = open_ctx(no_weights.with_changes(weight_free_shortlist=37, shortlist=11,
                                           library_dir=tmp_path / "bare"))
    try:
        for c in (ctx, context):
            c.library.add_folder(root)
            c.indexing.run()
            asked: list[int] = []
            real = c.local.shortlist

            def spy(features: Any, k: int, allowed: Any = None, _real: Any = real,
                    _asked: list[int] = asked) -> Any:
                _asked.append(k)
                return _real(features, k, allowed)

            monkeypatch.setattr(c.local, "shortlist", spy)
            c.search.begin(query)
            c.search.begin(query, shortlist=5)
            assert asked == ([37, 5] if c is ctx else [context.settings.shortlist, 5])
        # A model whose vectors are not there yet gives no candidates either.
        monkeypatch.setattr(context.search, "_global", lambda *_: ([], []))
        context.search.begin(query)
        assert asked[-1] == context.settings.weight_free_shortlist
        # AMES re-ranks what it is given within its budget: it keeps the model's depth.
        ames = type("Ames", (), {"name": "ames"})()
        monkeypatch.setattr(context.search, "_reranker", lambda *_: ames)
        context.search.begin(query)
        assert asked[-1] == context.settings.shortlist
    finally:
        ctx.close()


def test_a_read_error_while_completing_a_photo_keeps_what_it_had(
        make_settings: Callable[..., Settings], shared_encoder: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The backfill reads every indexed photo again; a passing read error (a slow share)
    must not turn a good photo into a failed one and take its embedding away."""
    from imagesearch.core.decode_pool import DecodePool
    from imagesearch.core.imaging import DecodedImage

    root = tmp_path / "photos"
    for i in range(3):
        noise_jpeg(root / f"p{i}.jpg", i, size=96)
    ctx = open_ctx(make_settings(local_features="off"), shared_encoder)
    try:
        ctx.library.add_folder(root)
        assert ctx.indexing.run().added == 3
    finally:
        ctx.close()
    original = DecodePool.decode

    def flaky(self: DecodePool, jobs: Any, *args: Any, **kwargs: Any) -> Any:
        for decoded in original(self, jobs, *args, **kwargs):
            if decoded.path.name == "p1.jpg":
                decoded = DecodedImage(decoded.path, decoded.size, decoded.mtime,
                                       error="cannot read the file: timed out")
            yield decoded

    monkeypatch.setattr(DecodePool, "decode", flaky)
    ctx = open_ctx(make_settings(local_features="compact"), shared_encoder)
    try:
        report = ctx.indexing.run()
        assert report.completed == 2 and report.failed == 0
        photo = ctx.library.photo(root / "p1.jpg")
        assert photo.status == "indexed"
        assert ctx.catalog.vector(photo.id, ctx.models.model_id) is not None
        assert len(ctx.vectors.index()) == 3  # type: ignore[arg-type]
        monkeypatch.setattr(DecodePool, "decode", original)
        assert ctx.indexing.run().completed == 1  # the next run completes it
    finally:
        ctx.close()
