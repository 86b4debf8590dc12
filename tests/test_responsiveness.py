"""Queries go before indexing on the model, and reopening the library never blocks the
window's thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from imagesearch.core.encoder import ClipEncoder
from imagesearch.core.imaging import PreprocessSpec
from imagesearch.core.priority_gate import PriorityGate
from imagesearch.domain import IndexReport
from tests.conftest import wait_until

if TYPE_CHECKING:
    from tests.gui_fixtures import GuiDriver

pytest_plugins = ["tests.gui_fixtures"]
pytestmark = pytest.mark.timeout(120)


def test_a_waiting_query_goes_before_waiting_indexing() -> None:
    gate = PriorityGate()
    order: list[str] = []
    release = threading.Event()

    def enter(name: str, urgent: bool) -> None:
        with gate.hold(urgent):
            order.append(name)
            if name == "batch 1":
                release.wait(20)

    first = threading.Thread(target=enter, args=("batch 1", False))
    first.start()
    wait_until(lambda: order == ["batch 1"])
    later = [threading.Thread(target=enter, args=("batch 2", False)),
             threading.Thread(target=enter, args=("query", True))]
    for i, thread in enumerate(later):  # batch 2 queues first, the query after it
        thread.start()
        wait_until(lambda n=i: gate.waiting == n + 1)
    release.set()
    for thread in [first, *later]:
        thread.join()
    assert order == ["batch 1", "query", "batch 2"]


class _SlowModel:
    """Stands in for an open_clip model whose image forward pass takes a while."""

    def __init__(self, seconds: float, log: list[str]) -> None:
        self.seconds = seconds
        self.log = log

    def encode_image(self, x: Any) -> Any:
        import torch

        self.log.append(f"images x{len(x)} start")
        time.sleep(self.seconds)
        self.log.append(f"images x{len(x)} end")
        return torch.ones((len(x), 4))

    def encode_text(self, tokens: Any) -> Any:
        import torch

        self.log.append("query")
        return torch.ones((len(tokens), 4))


def test_a_search_during_indexing_waits_for_one_batch_at_most() -> None:
    import torch

    log: list[str] = []
    encoder = ClipEncoder("slow/test", _SlowModel(0.3, log), lambda texts: torch.zeros(
        (len(texts), 3), dtype=torch.long), PreprocessSpec(size=8), "cpu", "fp32", 4)
    pixels = np.zeros((2, 8, 8, 3), np.uint8)

    def indexing() -> None:
        for _ in range(4):  # batch after batch, as a long run does
            encoder.encode_images(pixels, background=True)

    indexer = threading.Thread(target=indexing)
    indexer.start()
    wait_until(lambda: "images x2 start" in log)
    encoder.encode_texts(["a red tram"])
    indexer.join()
    # The query ran right after the batch under way: not after the batches queued behind.
    assert log.index("query") == log.index("images x2 end") + 1
    assert log.count("images x2 end") == 4


def test_indexing_asks_for_the_model_as_background_work(context: Any,
                                                        tmp_path: Path) -> None:
    from tests.conftest import noise_jpeg

    root = tmp_path / "photos"
    for i in range(3):
        noise_jpeg(root / f"{i}.jpg", i)
    calls: list[bool] = []
    real = context.models.encoder().encode_images

    def spy(pixels: np.ndarray, background: bool = False) -> np.ndarray:
        calls.append(background)
        return real(pixels, background=background)

    encoder = context.models.encoder()
    encoder.encode_images = spy
    try:
        context.library.add_folder(root)
        context.indexing.run()
        from imagesearch.domain import Query

        context.search.search(Query(image=noise_jpeg(tmp_path / "q.jpg", 9), top_k=1))
    finally:
        del encoder.encode_images
    assert calls[:-1] and all(calls[:-1]) and calls[-1] is False


def test_reopening_the_library_does_not_block_the_window(qtbot: Any, gui: GuiDriver,
                                                         photo_dir: Path) -> None:
    window = gui.indexed(photo_dir)
    old = window.library.ctx
    indexing, release = threading.Event(), threading.Event()

    def slow_run(*args: Any, **kwargs: Any) -> IndexReport:
        indexing.set()
        release.wait(20)  # a batch of a large model, still being encoded
        return IndexReport()

    old.indexing.run = slow_run
    window.indexer.start()
    assert indexing.wait(20)
    safety = threading.Timer(5.0, release.set)  # the old code would wait for this
    safety.start()
    try:
        window.library.reopen(window.settings.with_changes(device="cpu"))
        assert not release.is_set(), "reopen() waited for indexing on the GUI thread"
        assert window.library.ctx is None
        assert window.results.empty.title.text() == "Opening the library…"
    finally:
        release.set()
        safety.cancel()
    qtbot.waitUntil(lambda: window.library.ctx is not None and window.library.status
                    is not None, timeout=30_000)
    assert window.library.ctx is not old
    assert old.vectors.closed  # the old context was closed, off the GUI thread
