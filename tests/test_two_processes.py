"""Two processes on one library: the CLI indexing while the app's services write and
search. Nothing is lost or doubled, searches never fail, and the app's index ends up
holding exactly the catalog's vectors, the CLI's included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagesearch.config import Settings
from imagesearch.domain import Query
from tests.conftest import noise_jpeg
from tests.tiny_model import TINY_MODEL_ID

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parent.parent


def test_the_cli_indexes_while_the_app_writes_and_searches(
        tmp_path: Path, models_dir: Path, shared_encoder: Any) -> None:
    from imagesearch.services.context import build_context

    library = tmp_path / "library"
    library.mkdir()
    (library / "settings.json").write_text(json.dumps(
        {"batch_size": 8, "decode_workers": 1, "precision": "fp32"}))
    settings = Settings.load(library, models_dir=models_dir, model_id=TINY_MODEL_ID)
    by_cli = [noise_jpeg(tmp_path / "from-cli" / f"c{i:02d}.jpg", i, 48) for i in range(40)]
    by_app = [noise_jpeg(tmp_path / "from-app" / f"a{i:02d}.jpg", 100 + i, 48)
              for i in range(16)]
    app = build_context(settings, encoder=shared_encoder)  # debounced saves, as the app
    app.library.add_folder(tmp_path / "from-app")
    env = dict(os.environ, IMAGESEARCH_MODELS=str(models_dir), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO))
    cli = subprocess.Popen(
        [sys.executable, "-m", "imagesearch.cli.main", "--library", str(library), "--model",
         TINY_MODEL_ID, "index", str(tmp_path / "from-cli"), "--no-progress"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    errors: list[BaseException] = []
    runs = searches = 0

    def app_indexes_meanwhile() -> None:
        nonlocal runs
        try:
            while cli.poll() is None or runs == 0:  # every library folder, again and again
                app.indexing.run()
                runs += 1
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=app_indexes_meanwhile)
    writer.start()
    try:
        while writer.is_alive():
            try:
                app.search.search(Query(text="noise", top_k=5))
                searches += 1
            except BaseException as exc:
                errors.append(exc)
            time.sleep(0.02)
    finally:
        writer.join()
        out = cli.communicate(timeout=120)[0].decode(errors="replace")
    assert cli.returncode == 0, out
    assert errors == [] and runs >= 1 and searches >= 1
    # The app writes once more afterwards (a watcher batch, say): its index then holds the
    # CLI's vectors as well as its own, no more and no fewer than the catalog.
    app.indexing.update_paths([noise_jpeg(tmp_path / "from-app" / "late.jpg", 999, 48)])
    model = app.models.model_id
    with app.lane:
        index = app.vectors.refresh()
    catalog_ids = np.sort(app.catalog.vector_ids(model))
    assert index is not None and np.array_equal(np.sort(index.ids()), catalog_ids)
    assert len(catalog_ids) == len(by_cli) + len(by_app) + 1
    with app.catalog.engine.connect() as conn:
        from sqlalchemy import text

        rows = conn.execute(text("SELECT count(*), count(DISTINCT path) FROM photos")).one()
    assert tuple(rows) == (57, 57)
    hit = app.search.search(Query(image=by_cli[7], top_k=1))
    assert [h.path for h in hit] == [by_cli[7]]  # the CLI's photo, found by the app
    assert app.close() == ()
    again = build_context(settings, encoder=shared_encoder)
    try:
        reopened = again.vectors.index()
        assert reopened is not None and np.array_equal(np.sort(reopened.ids()), catalog_ids)
    finally:
        again.close()
