"""The runtime ladder: export, probe, cached choice, ONNX towers, and our tokenizer."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagesearch.core import encoder_loading
from imagesearch.core.clip_tokenizer import ClipTokenizer
from imagesearch.core.encoder import ClipEncoder
from imagesearch.core.encoder_loading import known_choice, load_encoder
from imagesearch.core.onnx_encoder import RuntimeEncoder
from imagesearch.core.runtime_probe import (
    CHOICES_FILE,
    MIN_SPEEDUP,
    ONNX_FP32_PARITY,
    decide_text,
    decide_visual,
    probe_images,
    top10_overlap,
)
from imagesearch.core.weights import WeightStore
from tests.tiny_model import TINY_MODEL_ID

TEXTS = ["a photo of a cat", "Red TRAM in the snow!!", "grandma's kitchen -dog",
         "naïve café 東京 🚋 &amp; co", "", "  spaced   out ", "it's 2024, 12:30",
         "word " * 100, "x" * 500, "l'été à Paris", "C++ & Rust: 1/2"]


def test_tokenizer_matches_open_clip() -> None:
    import open_clip
    from open_clip.tokenizer import default_bpe

    ours = ClipTokenizer(Path(default_bpe()), 77)
    theirs = open_clip.get_tokenizer("ViT-B-32")
    assert np.array_equal(ours(TEXTS), theirs(TEXTS).numpy())
    # Cut at the context length with the end token kept, as open_clip does.
    assert ours(["word " * 100])[0, -1] == ours.eot


def test_tokenizer_tables_read_only_what_they_use(tmp_path: Path) -> None:
    """The BPE file is read in chunks up to the lines used: a character cut by the last
    chunk, in the lines not used, changes nothing (and a short file is read whole)."""
    import gzip

    from imagesearch.core.clip_tokenizer import _MERGES, _tables

    used = [f"{chr(0x61 + i % 26)} {chr(0x61 + i // 26 % 26)}{i}" for i in range(_MERGES)]
    head = ("#version\n" + "\n".join(used) + "\n").encode()
    pad = (1 << 16) - len(head) % (1 << 16) - 1  # the next character straddles a chunk end
    tail = b"x" * (pad - 1) + b"\n" + "é q\nmore lines\n".encode()
    path = tmp_path / "bpe.txt.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(head + tail)
    tokens, ranks = _tables(path, ["<start_of_text>", "<end_of_text>"])
    assert list(ranks) == used and ranks[used[-1]] == _MERGES - 1
    assert tokens[used[0].replace(" ", "")] == 512
    short = tmp_path / "short.txt.gz"
    with gzip.open(short, "wb") as fh:
        fh.write(b"#version\na b\nab c")  # fewer merges than used, no final newline
    assert list(_tables(short, [])[1]) == ["a b", "ab c"]


def test_a_forced_choice_is_not_kept_once_back_to_automatic(tmp_path: Path) -> None:
    from imagesearch.core.encoder_loading import _usable
    from imagesearch.core.runtime_probe import RuntimeChoice

    forced = RuntimeChoice("fp32", "torch", note="forced fp32")
    assert _usable(forced, "fp32", "sha", tmp_path)
    assert not _usable(forced, None, "sha", tmp_path)  # automatic: measured again
    assert _usable(RuntimeChoice("fp32", "torch"), None, "sha", tmp_path)


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory,
           tiny_checkpoint: tuple[Path, Path]) -> WeightStore:
    """A models folder with the tiny model installed and probed once (a child process)."""
    store = WeightStore(tmp_path_factory.mktemp("probed-models"))
    store.install_file(TINY_MODEL_ID, *tiny_checkpoint)
    load_encoder(TINY_MODEL_ID, store, device="cpu", precision="onnx-int8",
                 allow_download=False)
    return store


def test_probe_records_figures_and_keeps_only_chosen_graphs(probed: WeightStore) -> None:
    choice = known_choice(probed, TINY_MODEL_ID)
    assert choice is not None and choice.figures
    assert set(choice.figures) >= {"fp32", "onnx-fp32", "onnx-int8",
                                   "text onnx-fp32", "text onnx-int8"}
    assert choice.visual == "onnx-int8" and choice.note == "forced onnx-int8"
    assert decide_visual(choice.figures) in ("fp32", "bf16", "onnx-fp32", "onnx-int8")
    for name in ("onnx-fp32", "onnx-int8"):
        assert choice.figures[name]["min_cosine"] > 0.99  # the tiny model exports faithfully
    folder = probed.model_dir(TINY_MODEL_ID) / "runtime"
    kept = sorted(p.name for p in folder.glob("*.onnx"))
    expected = {f"visual.{choice.visual.removeprefix('onnx-')}.onnx"
                if choice.visual.startswith("onnx-") else None,
                f"textual.{choice.text.removeprefix('onnx-')}.onnx"
                if choice.text.startswith("onnx-") else None} - {None}
    assert set(kept) == expected
    assert "images:" in choice.summary() and "top-10" in choice.summary()


def test_int8_weights_are_seven_bit_with_a_scale_per_channel(probed: WeightStore) -> None:
    """Without VNNI, ONNX Runtime's uint8 x int8 products saturate in 16-bit pair sums
    when weights use all 8 bits (the image tower fell to a cosine of 0.988 on an AVX2-only
    EPYC); 7-bit weights cannot saturate, and per-channel scales keep their precision."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(probed.model_dir(TINY_MODEL_ID) / "runtime" / "visual.int8.onnx"))
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    # quantize_dynamic writes MatMulInteger (inputs: A, B, A's zero point, B's zero
    # point), Gemm rewritten as a MatMul; the weight's scale sits beside it by name.
    quantised = [n for n in graph.graph.node if n.op_type == "MatMulInteger"]
    assert quantised
    for node in quantised:
        weights = tensors[node.input[1]]
        assert weights.dtype == np.int8 and int(np.abs(weights.astype(int)).max()) <= 64
        scale = tensors[node.input[1].removesuffix("_quantized") + "_scale"]
        assert tensors[node.input[3]].size == scale.size == weights.shape[-1] > 1


def test_new_graph_formats_are_probed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagesearch.core import runtime_probe

    key = runtime_probe.choice_key(TINY_MODEL_ID, "ab" * 32)
    monkeypatch.setattr(runtime_probe, "RUNTIME_FORMAT", runtime_probe.RUNTIME_FORMAT + 1)
    assert runtime_probe.choice_key(TINY_MODEL_ID, "ab" * 32) != key


def test_onnx_towers_agree_with_torch(probed: WeightStore,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    precision = "onnx-int8"
    encoder = load_encoder(TINY_MODEL_ID, probed, device="cpu", precision=precision,
                           allow_download=False)
    assert isinstance(encoder, RuntimeEncoder) and encoder.visual == precision
    reference = ClipEncoder.load(TINY_MODEL_ID, probed, device="cpu", precision="fp32",
                                 allow_download=False)
    pixels = probe_images(encoder.spec.size, groups=4)
    cos = np.sum(encoder.encode_images(pixels) * reference.encode_images(pixels), axis=1)
    assert cos.min() > 0.99
    texts = ["a cat", "red tram in the snow", "a bowl of soup"]
    cos = np.sum(encoder.encode_texts(texts) * reference.encode_texts(texts), axis=1)
    assert cos.min() > 0.99
    assert encoder.encode_images(pixels[:0]).shape == (0, encoder.dim)

    # The choice is cached: loading again runs no probe.
    def no_probe(*_args: object) -> None:
        raise AssertionError("probed again")

    monkeypatch.setattr(encoder_loading, "_probe_in_child", no_probe)
    again = load_encoder(TINY_MODEL_ID, probed, device="cpu", precision=precision,
                         allow_download=False)
    assert isinstance(again, RuntimeEncoder) and again.visual == precision


def test_the_app_keeps_the_optimised_forms_of_the_graphs_it_runs(probed: WeightStore) -> None:
    from imagesearch.core.optimized_graph import cached_form

    encoder = load_encoder(TINY_MODEL_ID, probed, device="cpu", precision="onnx-int8",
                           allow_download=False)
    assert isinstance(encoder, RuntimeEncoder)
    encoder.encode_images(probe_images(encoder.spec.size, groups=1))
    encoder.encode_texts(["a cat"])
    folder = probed.model_dir(TINY_MODEL_ID) / "runtime"
    for graph in folder.glob("*.onnx"):
        form = cached_form(graph)
        assert form is not None and form.is_file(), graph.name


def test_new_weights_are_probed_again(probed: WeightStore, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = WeightStore(tmp_path / "models")
    shutil.copytree(probed.root, store.root)
    assert known_choice(store, TINY_MODEL_ID) is not None
    from tests.tiny_model import write_tiny_checkpoint

    checkpoint, config = write_tiny_checkpoint(tmp_path / "other", seed=1)
    store.install_file(TINY_MODEL_ID, checkpoint, config)  # same id, other weights
    assert known_choice(store, TINY_MODEL_ID) is None
    probes: list[str] = []
    monkeypatch.setattr(encoder_loading, "_probe_in_child",
                        lambda w, f, forced, cancel: probes.append(w.sha256) or
                        encoder_loading._fallback("counted"))
    load_encoder(TINY_MODEL_ID, store, device="cpu", allow_download=False)
    load_encoder(TINY_MODEL_ID, store, device="cpu", allow_download=False)
    assert probes == [store.installed(TINY_MODEL_ID).sha256]  # type: ignore[union-attr]
    before = json.loads((probed.root / CHOICES_FILE).read_text())
    after = json.loads((store.root / CHOICES_FILE).read_text())
    assert len(after) == len(before) + 1


def test_a_stale_export_is_probed_again(probed: WeightStore, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached choice whose graphs are gone (or of an older format) is not trusted."""
    store = WeightStore(tmp_path / "models")
    shutil.copytree(probed.root, store.root)
    choice = known_choice(store, TINY_MODEL_ID)
    assert choice is not None
    folder = store.model_dir(TINY_MODEL_ID) / "runtime"
    manifest = json.loads((folder / "runtime.json").read_text())
    (folder / "runtime.json").write_text(json.dumps({**manifest, "format": 0}))
    probes: list[str] = []
    monkeypatch.setattr(encoder_loading, "_probe_in_child",
                        lambda w, f, forced, cancel: probes.append(str(f)) or
                        encoder_loading._fallback("counted"))
    encoder = load_encoder(TINY_MODEL_ID, store, device="cpu", allow_download=False)
    assert probes == [str(folder)] and isinstance(encoder, ClipEncoder)


def test_a_failed_probe_falls_back_to_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            tiny_checkpoint: tuple[Path, Path]) -> None:
    store = WeightStore(tmp_path)
    store.install_file(TINY_MODEL_ID, *tiny_checkpoint)
    monkeypatch.setattr(encoder_loading, "_probe_in_child",
                        lambda w, f, forced, cancel: encoder_loading._fallback("no runtime here"))
    encoder = load_encoder(TINY_MODEL_ID, store, device="cpu", allow_download=False)
    assert isinstance(encoder, ClipEncoder) and encoder.precision == "fp32"
    choice = known_choice(store, TINY_MODEL_ID)
    assert choice is not None and "no runtime here" in choice.note


_HOLD_LOCK = """
import sys, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
"""


def test_one_probe_at_a_time_across_processes(probed: WeightStore, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A process that finds the probe lock held by another waits; if the holder recorded
    a usable choice meanwhile, it probes nothing itself; a cancel while waiting stops the
    load; once the holder is gone, the lock is free again."""
    from imagesearch.errors import ModelLoadError

    store = WeightStore(tmp_path / "models")
    shutil.copytree(probed.root, store.root)
    choices = store.root / CHOICES_FILE
    recorded = choices.read_text()
    choices.unlink()  # as if never probed on this machine
    probes: list[str] = []
    monkeypatch.setattr(encoder_loading, "_probe_in_child",
                        lambda w, f, forced, cancel: probes.append(str(f)) or
                        encoder_loading._fallback("counted"))
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(store.root / encoder_loading.PROBE_LOCK_FILE)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    cancel = threading.Event()
    outcome: dict[str, object] = {}

    def load() -> None:
        try:
            outcome["encoder"] = load_encoder(TINY_MODEL_ID, store, device="cpu",
                                              precision="onnx-int8", allow_download=False,
                                              cancel=cancel)
        except Exception as exc:
            outcome["error"] = exc

    def waiting() -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "waiting for another imagesearch process" in caplog.text:
                return True
            time.sleep(0.05)
        return False

    loader = threading.Thread(target=load, daemon=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with caplog.at_level("WARNING", logger=encoder_loading.__name__):
            loader.start()
            assert waiting() and not probes  # blocked on the other process's lock
            choices.write_text(recorded)  # the other process's probe ends, recording
            holder.stdin.close()  # type: ignore[union-attr]
            holder.wait(30)
            loader.join(30)
        assert not loader.is_alive() and not probes
        assert isinstance(outcome.get("encoder"), RuntimeEncoder), outcome

        # Held again: a cancel while waiting ends the load with a clear error.
        choices.unlink()
        caplog.clear()
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK,
             str(store.root / encoder_loading.PROBE_LOCK_FILE)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        outcome.clear()
        loader = threading.Thread(target=load, daemon=True)
        with caplog.at_level("WARNING", logger=encoder_loading.__name__):
            loader.start()
            assert waiting()
            cancel.set()
            loader.join(30)
        assert not loader.is_alive() and not probes
        assert isinstance(outcome.get("error"), ModelLoadError)
        assert "cancelled" in str(outcome["error"])
    finally:
        cancel.set()
        holder.kill()
        holder.wait(30)
        if loader.ident is not None:
            loader.join(5)
    # The holder is gone (killed): the lock is free, and the probe runs.
    cancel.clear()
    load_encoder(TINY_MODEL_ID, store, device="cpu", precision="onnx-int8",
                 allow_download=False, cancel=cancel)
    assert len(probes) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_probe_child_ends_with_its_parent(tmp_path: Path) -> None:
    """A probe child whose parent is killed outright exits too: the parent's probe lock
    died with it, and an orphan probe would export beside the next one."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, sys, time\n"
        "def child(flag):\n"
        "    from imagesearch.core.runtime_measure import _end_with_parent\n"
        "    _end_with_parent()\n"
        "    open(flag, 'w').close()\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    p = multiprocessing.get_context('spawn').Process(target=child,\n"
        "                                                 args=(sys.argv[1],), daemon=True)\n"
        "    p.start()\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(120)\n")
    flag = tmp_path / "started"
    parent = subprocess.Popen([sys.executable, str(script), str(flag)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 60
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert flag.exists()
    finally:
        parent.kill()
        parent.wait(30)

    def alive(pid: int) -> bool:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return False
        return fields[0] not in ("Z", "X")  # a zombie has ended; no one reaped it yet

    deadline = time.monotonic() + 20
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    ended = not alive(child)
    if not ended:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, 9)
    assert ended


def test_decisions_follow_the_thresholds() -> None:
    figures = {"fp32": {"min_cosine": 1.0, "top10": 1.0, "images_per_s": 10.0},
               "bf16": {"min_cosine": 0.9999, "top10": 0.99, "images_per_s": 11.0},
               "onnx-int8": {"min_cosine": 0.999, "top10": 0.95, "images_per_s": 25.0}}
    assert decide_visual(figures) == "onnx-int8"
    figures["onnx-int8"]["top10"] = 0.8  # rankings change too much
    assert decide_visual(figures) == "fp32"  # bf16 is faithful but not faster by the margin
    figures["bf16"]["images_per_s"] = 10.0 * MIN_SPEEDUP
    assert decide_visual(figures) == "bf16"
    # Nothing faster by the margin: ONNX Runtime fp32, about as fast, spares torch.
    figures["bf16"]["images_per_s"] = 11.0
    figures["onnx-fp32"] = {"min_cosine": 1.0, "top10": 1.0, "images_per_s": 9.5}
    assert decide_visual(figures) == "onnx-fp32"
    # ...unless the text tower is on torch anyway: one torch model then serves both.
    assert decide_visual(figures, text_on_torch=True) == "fp32"
    figures["onnx-fp32"]["images_per_s"] = 10.0 * ONNX_FP32_PARITY - 0.1  # too slow
    assert decide_visual(figures) == "fp32"
    figures["onnx-fp32"].update(images_per_s=11.0, top10=0.5)  # unfaithful
    assert decide_visual(figures) == "fp32"
    figures["onnx-fp32"]["top10"] = 1.0
    figures["onnx-int8"]["top10"] = 0.95  # a faster faithful rung still wins
    assert decide_visual(figures) == "onnx-int8"
    text = {"text onnx-fp32": {"min_cosine": 1.0, "top10": 1.0, "graph_mb": 153.0,
                               "query_ms": 30.0},
            "text onnx-int8": {"min_cosine": 0.998, "top10": 0.95, "graph_mb": 39.0,
                               "query_ms": 20.0}}
    assert decide_text(text) == "onnx-int8"
    text["text onnx-int8"]["min_cosine"] = 0.9
    assert decide_text(text) == "onnx-fp32"
    text["text onnx-fp32"]["top10"] = 0.5
    assert decide_text(text) == "torch"


def test_a_far_slower_rung_is_scouted_not_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rung twice as slow as fp32 on a few images is left after them, shown, never chosen;
    a forced rung is measured in full; a rung that fails is left out, the others go on."""
    from imagesearch.core import runtime_measure
    from imagesearch.core.runtime_measure import measure_visual
    from imagesearch.core.runtime_probe import SCOUT_IMAGES, RuntimeChoice, probe_images

    pixels = probe_images(16)
    project = np.random.default_rng(0).standard_normal((16 * 16 * 3, 8))
    calls: dict[str, int] = {}

    def rung(name: str) -> Any:
        def run(px: np.ndarray) -> np.ndarray:
            calls[name] = calls.get(name, 0) + 1
            return np.asarray(px.reshape(len(px), -1) / 255.0 @ project, np.float32)
        run.rung = name  # type: ignore[attr-defined]
        return run

    # The scout's clock, by rung: the slow one takes 2x fp32 (the limit), the rest less.
    scout_s = {"fp32": 0.5, "bf16": 1.0, "onnx-int8": 0.1, "onnx-fp32": 0.99}
    timed: list[str] = []

    def seconds(run: Any, px: np.ndarray, calls: int = 2) -> float:
        run(px)
        timed.append(run.rung)
        return scout_s[run.rung]

    monkeypatch.setattr(runtime_measure, "_seconds", seconds)
    rates = {"fp32": 10.0, "bf16": 5.0, "onnx-int8": 50.0, "onnx-fp32": 11.0}  # batch rates
    monkeypatch.setattr(runtime_measure, "_rate", lambda run, px: rates[run.rung])
    rungs = {name: rung(name) for name in ("fp32", "bf16", "onnx-fp32", "onnx-int8")}
    ref_txt = np.random.default_rng(1).standard_normal((24, 8))
    ref_txt /= np.linalg.norm(ref_txt, axis=1, keepdims=True)
    ref_img = rungs["fp32"](pixels)
    ref_img /= np.linalg.norm(ref_img, axis=1, keepdims=True)
    figures = measure_visual(rungs, pixels, ref_img, ref_txt)
    assert calls["bf16"] == 1  # the scout's call only, never the probe set
    # fp32 timed again just before each rung it is compared with
    assert timed == ["fp32", "bf16", "fp32", "onnx-fp32", "fp32", "onnx-int8"]
    assert figures["bf16"] == {"images_per_s": round(SCOUT_IMAGES / 1.0, 2),
                               "scouted_only": 1.0}
    for name in ("onnx-fp32", "onnx-int8"):  # under the limit: measured in full
        assert figures[name]["min_cosine"] > 0.999 and "scouted_only" not in figures[name]
    assert decide_visual(figures) == "onnx-int8"
    figures["onnx-int8"]["min_cosine"] = 0.5  # unfaithful: the scouted rung still is not
    figures["onnx-fp32"]["min_cosine"] = 0.5  # a candidate
    assert decide_visual(figures) == "fp32"
    line = RuntimeChoice("fp32", "onnx-int8", figures).summary()
    assert f"bf16 {SCOUT_IMAGES / 1.0:.1f}/s (far slower than fp32 on {SCOUT_IMAGES} " \
        "images: not measured further)" in line

    forced = measure_visual(rungs, pixels, ref_img, ref_txt, exempt=frozenset({"bf16"}))
    assert "scouted_only" not in forced["bf16"] and forced["bf16"]["min_cosine"] > 0.999

    class Fail(Exception):  # ONNX Runtime's errors derive from Exception alone
        pass

    def broken(px: np.ndarray) -> np.ndarray:
        raise Fail("no such kernel on this CPU")

    broken.rung = "onnx-fp32"  # type: ignore[attr-defined]
    rungs["onnx-fp32"] = broken
    figures = measure_visual(rungs, pixels, ref_img, ref_txt)
    assert "onnx-fp32" not in figures and figures["onnx-int8"]["min_cosine"] > 0.999
    rungs["fp32"] = broken  # no reference at all: the probe fails (torch fp32 is used)
    with pytest.raises(Fail):
        measure_visual(rungs, pixels, ref_img, ref_txt)


def test_the_scout_takes_the_best_of_its_calls() -> None:
    from imagesearch.core.runtime_measure import _seconds

    delays = iter([0.0, 0.3, 0.01])  # the set-up call, a call slowed by load, a fair one
    took = _seconds(lambda px: time.sleep(next(delays)), np.zeros(1), calls=2)
    assert 0.005 < took < 0.25


def test_top10_overlap() -> None:
    rng = np.random.default_rng(0)
    g = rng.normal(size=(40, 8)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    assert top10_overlap(g, g, g, g, True) == 1.0
    assert top10_overlap(g, g, g, rng.permutation(g), True) < 0.5
    # Nearly identical embeddings: any order is a tie, so rounding noise is no failure...
    flat = np.ones((40, 8), np.float32) + 1e-5 * g
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    noisy = flat + 1e-6 * rng.normal(size=flat.shape).astype(np.float32)
    assert top10_overlap(flat, flat, noisy, noisy, True) == 1.0
    # ...while a real reordering of well-separated neighbours is.
    assert top10_overlap(g, g, rng.permutation(g), g, True) < 0.5


def test_cold_text_search_imports_no_torch(probed: WeightStore, tmp_path: Path,
                                           photo_dir: Path) -> None:
    """With ONNX Runtime chosen, a search process never imports torch or open_clip."""
    models = tmp_path / "models"
    shutil.copytree(probed.root, models)
    store = WeightStore(models)
    load_encoder(TINY_MODEL_ID, store, device="cpu", precision="onnx-int8",
                 allow_download=False)  # a cached choice whose towers are both ONNX
    library = tmp_path / "lib"
    library.mkdir()
    (library / "settings.json").write_text(json.dumps(
        {"model_id": TINY_MODEL_ID, "precision": "onnx-int8", "decode_workers": 1}))
    env = {"IMAGESEARCH_HOME": str(library), "IMAGESEARCH_MODELS": str(models),
           "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    script = ("import sys, json\nimport imagesearch.cli.main as m\n"
              "if sys.argv[1] == 'full':  # the library opened in full, as when the index\n"
              "    m._answered_at_once = lambda *_: False  # file is stale\n"
              "code = m.main(sys.argv[2:])\n"
              "print(json.dumps([code, sorted(m for m in ('torch', 'open_clip', 'cv2',"
              " 'sqlalchemy') if m in sys.modules)]))\n")

    def run(*args: str, path: str = "quick") -> tuple[int, list[str], str]:
        proc = subprocess.run([sys.executable, "-c", script, path, *args], env=env,
                              capture_output=True, text=True, timeout=120)
        code, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
        return code, heavy, proc.stdout

    from imagesearch.cli.main import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGESEARCH_HOME", str(library))
        mp.setenv("IMAGESEARCH_MODELS", str(models))
        assert main(["index", str(photo_dir), "--no-progress"]) == 0
    for path in ("quick", "full"):
        code, heavy, out = run("search", "a", "cup", "of", "coffee", "-k", "3", path=path)
        # SQLAlchemy: only where the library was opened in full (each arm took its path).
        expected = [] if path == "quick" else ["sqlalchemy"]
        assert code == 0 and heavy == expected and len(out.strip().splitlines()) == 4, path


def test_models_list_and_status_bar_show_the_choice(probed: WeightStore, tmp_path: Path,
                                                    qtbot) -> None:  # type: ignore[no-untyped-def]
    import time

    from imagesearch.config import Settings
    from imagesearch.domain import LibraryStatus
    from imagesearch.gui.status import StatusBar
    from imagesearch.services.models import ModelManager

    models = ModelManager(Settings(library_dir=tmp_path, models_dir=probed.root,
                                   model_id=TINY_MODEL_ID, precision="onnx-int8"))
    info = next(m for m in models.models() if m.id == TINY_MODEL_ID)
    assert info.runtime.startswith("images: onnx-int8") and "cos" in info.runtime
    assert all(not m.runtime for m in models.models() if not m.installed)

    models.preload(("textual",))  # loads in the background; encoder() waits for it
    deadline = time.monotonic() + 30
    encoder = models.encoder()
    while "textual" not in encoder._towers and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    assert "textual" in encoder._towers and "visual" not in encoder._towers  # type: ignore[attr-defined]
    models.close()
    assert models._preloading is None

    bar = StatusBar()
    qtbot.addWidget(bar)
    bar.set_status(LibraryStatus(tmp_path, TINY_MODEL_ID, "cpu", 0, 0, 0, 0,
                                 runtime=models.runtime_summary()))
    assert "onnx-int8" in bar.device.toolTip() and "top-10" in bar.device.toolTip()


def test_a_probe_is_cancelled_at_once(tmp_path: Path,
                                      tiny_checkpoint: tuple[Path, Path]) -> None:
    """Closing the app during a first-time probe kills it rather than waiting for it."""
    import threading
    import time

    from imagesearch.errors import ModelLoadError

    store = WeightStore(tmp_path)
    store.install_file(TINY_MODEL_ID, *tiny_checkpoint)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="cancelled"):
        load_encoder(TINY_MODEL_ID, store, device="cpu", allow_download=False,
                     cancel=cancel)
    assert time.monotonic() - start < 5.0
    assert known_choice(store, TINY_MODEL_ID) is None  # nothing half-measured is kept
