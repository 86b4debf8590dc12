"""Missing model weights: the app says so, stays usable, and installs or downloads them."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from imagesearch.config import DEFAULT_MODEL, Settings
from imagesearch.errors import ModelUnavailable
from imagesearch.gui.model_setup import split_model_files
from tests.tiny_model import TINY_MODEL_ID

if TYPE_CHECKING:
    from tests.gui_fixtures import GuiDriver, WindowFactory

pytest_plugins = ["tests.gui_fixtures"]


@pytest.fixture
def no_weights(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    return make_settings(models_dir=tmp_path / "empty-models")


def test_missing_model_then_install_from_file(
        qtbot: Any, gui: GuiDriver, make_window: WindowFactory, no_weights: Settings,
        photo_dir: Path, tiny_checkpoint: tuple[Path, Path]) -> None:
    window = make_window(settings=no_weights, load_model=True)
    setup = window.model_setup
    assert setup.isVisible()
    assert "is not on this computer" in setup.text.text()
    assert "searching by image works" in setup.text.text()
    assert setup.download_button.isEnabled() and setup.install_button.isEnabled()

    # Searching by description explains itself; adding a folder indexes it by its
    # details, so searching by image already works.
    window.search_bar.edit.setText("a cat")
    window.run_search()
    qtbot.waitUntil(lambda: window.results.empty.title.text() == "Cannot search",
                    timeout=20_000)
    assert "not installed" in window.results.empty.body.text()
    window.library.add_folders([photo_dir])
    gui.wait_indexed(window, 6)
    ctx = window.library.ctx
    assert ctx.catalog.vector_ids(ctx.models.model_id).size == 0  # no model: no vectors
    refined: list[list[Any]] = []
    window.searches.refined.connect(lambda _rid, hits, _what: refined.append(hits))
    window.search_bar.edit.clear()
    window.search_bar.set_image(photo_dir / "trip" / "coffee.jpg")
    qtbot.waitUntil(lambda: bool(refined), timeout=30_000)
    assert refined[-1][0].path == photo_dir / "trip" / "coffee.jpg"
    assert refined[-1][0].box is not None and refined[-1][0].global_score is None

    # Install from the file a user picked (checkpoint plus its open_clip config).
    checkpoint, config = tiny_checkpoint
    installed: list[bool] = []
    setup.installed.connect(lambda: installed.append(True))
    setup.install([config, checkpoint])
    qtbot.waitUntil(lambda: bool(installed), timeout=30_000)
    assert not setup.isVisible()
    # Indexing starts by itself once the model is there, and fills in the vectors.
    qtbot.waitUntil(lambda: ctx.catalog.vector_ids(ctx.models.model_id).size == 6,
                    timeout=60_000)
    window.search_bar.clear_image()
    window.search_bar.edit.setText("a cat")
    window.run_search()
    qtbot.waitUntil(lambda: window.model.rowCount() == 6, timeout=30_000)


def test_without_model_or_local_features_nothing_is_indexed(
        qtbot: Any, make_window: WindowFactory, no_weights: Settings, photo_dir: Path) -> None:
    window = make_window(settings=no_weights.with_changes(local_features="off"),
                         load_model=True)
    assert "Searching and indexing need it" in window.model_setup.text.text()
    window.library.add_folders([photo_dir])
    panel = window.library_panel
    qtbot.waitUntil(lambda: panel.folders.topLevelItemCount() == 1, timeout=20_000)
    assert not window.indexer.running


def test_install_refuses_a_pick_without_a_checkpoint(qtbot: Any, make_window: WindowFactory,
                                                     no_weights: Settings,
                                                     tmp_path: Path) -> None:
    window = make_window(settings=no_weights, load_model=True)
    assert window.model_setup.isVisible()
    messages: list[str] = []
    window.model_setup.message.connect(messages.append)
    window.model_setup.install([tmp_path / "notes.json"])
    assert messages and "checkpoint" in messages[0]
    assert window.model_setup.isVisible()
    assert split_model_files([Path("a.safetensors"), Path("b.json")]) == (
        Path("a.safetensors"), Path("b.json"))


@pytest.mark.parametrize(("model_id", "reason"), [
    (DEFAULT_MODEL, "switched off"),  # the test session is offline (HF_HUB_OFFLINE)
    (TINY_MODEL_ID, "not a published open_clip checkpoint"),
])
def test_download_failure_explains_why(qtbot: Any, make_window: WindowFactory,
                                       no_weights: Settings, model_id: str,
                                       reason: str) -> None:
    window = make_window(settings=no_weights.with_changes(model_id=model_id), load_model=True)
    setup = window.model_setup
    assert setup.isVisible()
    messages: list[str] = []
    setup.message.connect(messages.append)
    setup.download_button.click()
    qtbot.waitUntil(lambda: bool(messages), timeout=20_000)
    assert reason in messages[0]
    assert reason in setup.text.text()
    assert setup.download_button.isEnabled() and not setup.progress.isVisible()


def test_download_progress_and_cancel(qtbot: Any, make_window: WindowFactory,
                                      no_weights: Settings,
                                      tiny_checkpoint: tuple[Path, Path]) -> None:
    """The network is replaced by a stand-in that reports progress like the real download."""
    window = make_window(settings=no_weights, load_model=True)
    ctx = window.library.ctx
    assert ctx is not None
    setup = window.model_setup
    assert setup.isVisible()
    total = 10 * 2**20
    steps: list[int] = []

    def slow_download(model_id: str | None = None, progress: Any = None) -> Path:
        for done in range(0, total + 1, 2**20):
            progress(done, total)
            steps.append(done)
            time.sleep(0.05)
        raise ModelUnavailable("never reached: the user cancels first")

    ctx.models.download = slow_download  # type: ignore[method-assign]
    messages: list[str] = []
    setup.message.connect(messages.append)
    setup.download()
    qtbot.waitUntil(lambda: setup.progress.value() > 0, timeout=10_000)
    assert setup.progress.maximum() == 1000 and "of 10 MB" in setup.progress.format()
    setup.cancel_button.click()
    qtbot.waitUntil(lambda: bool(messages), timeout=10_000)
    assert messages == ["Download cancelled."]
    assert steps[-1] < total

    checkpoint, config = tiny_checkpoint

    def quick_download(model_id: str | None = None, progress: Any = None) -> Path:
        for done in (0, total // 2, total):
            progress(done, total)
        return ctx.models.install(checkpoint, None, config).path or checkpoint

    ctx.models.download = quick_download  # type: ignore[method-assign]
    installed: list[bool] = []
    setup.installed.connect(lambda: installed.append(True))
    setup.download_button.click()
    qtbot.waitUntil(lambda: bool(installed), timeout=30_000)
    assert not setup.isVisible()
    assert ctx.models.weights_present()
