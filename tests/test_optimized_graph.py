"""Sessions from a graph's kept optimised form (core/optimized_graph.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagesearch.core import optimized_graph
from imagesearch.core.onnx_encoder import onnx_session


def _write_graph(path: Path, seed: int = 0) -> None:
    """A small graph with something to optimise: MatMul + Add + Relu, twice."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
             helper.make_node("Add", ["m2", "b2"], ["y"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _run(session: Any) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    return np.asarray(session.run(None, {"x": x})[0])


def _graph_and_answer(graph: Path) -> tuple[Path, np.ndarray]:
    """A graph written at ``graph`` and its answer from a plain session."""
    _write_graph(graph)
    return graph, _run(onnx_session(graph))


def _forms(graph: Path) -> list[Path]:
    return sorted(graph.parent.glob(f"{graph.name}.*{optimized_graph.SUFFIX}"))


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """What ONNX Runtime is asked to load, in order: (file name, "write" or "read"), where
    "write" is an extended-level load that saves its optimised graph and "read" a load at
    the "all" level, as every session the app uses is."""
    import onnxruntime as ort

    seen: list[tuple[str, str]] = []
    real = ort.InferenceSession
    level = ort.GraphOptimizationLevel

    def spy(path: str, options: Any, *args: Any, **kwargs: Any) -> Any:
        if options.optimized_model_filepath:
            assert options.graph_optimization_level == level.ORT_ENABLE_EXTENDED
            seen.append((Path(path).name, "write"))
        else:
            assert options.graph_optimization_level == level.ORT_ENABLE_ALL
            seen.append((Path(path).name, "read"))
        return real(path, options, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    return seen


def test_the_first_load_keeps_the_optimised_form_and_later_loads_read_it(
        tmp_path: Path, loaded: list[tuple[str, str]]) -> None:
    graph, plain = _graph_and_answer(tmp_path / "textual.int8.onnx")
    loaded.clear()
    first = onnx_session(graph, keep_optimized=True)
    (form,) = _forms(graph)
    assert loaded == [(graph.name, "write"), (form.name, "read")]
    assert not list(tmp_path.glob("*.partial"))
    np.testing.assert_array_equal(_run(first), plain)
    loaded.clear()
    again = onnx_session(graph, keep_optimized=True)
    assert loaded == [(form.name, "read")]  # the graph itself is not optimised again
    np.testing.assert_array_equal(_run(again), plain)


def test_a_damaged_form_is_written_again(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    graph, plain = _graph_and_answer(tmp_path / "visual.int8.onnx")
    onnx_session(graph, keep_optimized=True)
    (form,) = _forms(graph)
    form.write_bytes(b"not a graph")
    with caplog.at_level(logging.WARNING, logger="imagesearch.core.optimized_graph"):
        session = onnx_session(graph, keep_optimized=True)
    assert "cannot be loaded" in caplog.text
    np.testing.assert_array_equal(_run(session), plain)
    assert not _forms(graph)
    np.testing.assert_array_equal(_run(onnx_session(graph, keep_optimized=True)), plain)
    assert _forms(graph) == [form] and form.stat().st_size > 100


def test_a_graph_exported_again_gets_a_new_form_and_the_old_one_goes(tmp_path: Path) -> None:
    graph = tmp_path / "visual.fp32.onnx"
    _write_graph(graph, seed=0)
    onnx_session(graph, keep_optimized=True)
    (old,) = _forms(graph)
    _write_graph(graph, seed=1)  # other weights: the old form would give wrong answers
    stat = graph.stat()
    os.utime(graph, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    plain = _run(onnx_session(graph))
    session = onnx_session(graph, keep_optimized=True)
    np.testing.assert_array_equal(_run(session), plain)
    (new,) = _forms(graph)
    assert new != old and not old.exists()


def test_in_a_read_only_folder_the_graph_is_loaded_once_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loaded: list[tuple[str, str]]
        ) -> None:
    graph, plain = _graph_and_answer(tmp_path / "textual.fp32.onnx")

    def read_only(*_args: object, **_kwargs: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(optimized_graph.tempfile, "mkstemp", read_only)
    for _ in range(2):
        loaded.clear()
        np.testing.assert_array_equal(_run(onnx_session(graph, keep_optimized=True)), plain)
        assert loaded == [(graph.name, "read")]  # optimised once, not twice
    assert not optimized_graph.siblings(graph)


def test_a_form_onnx_runtime_cannot_write_is_not_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loaded: list[tuple[str, str]]
        ) -> None:
    import onnxruntime as ort

    graph, plain = _graph_and_answer(tmp_path / "visual.int8.onnx")
    spy = ort.InferenceSession

    def failing_save(path: str, options: Any, *args: Any, **kwargs: Any) -> Any:
        if options.optimized_model_filepath:
            Path(options.optimized_model_filepath).write_bytes(b"torn")  # as a full disk
            raise RuntimeError("Failed to save the optimized model")
        return spy(path, options, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", failing_save)
    np.testing.assert_array_equal(_run(onnx_session(graph, keep_optimized=True)), plain)
    assert not _forms(graph) and not list(tmp_path.glob("*.partial"))
    loaded.clear()
    np.testing.assert_array_equal(_run(onnx_session(graph, keep_optimized=True)), plain)
    assert loaded == [(graph.name, "read")]


def test_a_form_that_will_not_load_gives_way_to_the_graph(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    import onnxruntime as ort

    graph, plain = _graph_and_answer(tmp_path / "visual.int8.onnx")
    real = ort.InferenceSession

    def refuse_forms(path: str, *args: Any, **kwargs: Any) -> Any:
        if path.endswith(optimized_graph.SUFFIX):
            raise RuntimeError("unsupported by this build")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", refuse_forms)
    with caplog.at_level(logging.WARNING, logger="imagesearch.core.optimized_graph"):
        session = onnx_session(graph, keep_optimized=True)
    assert "cannot be loaded" in caplog.text
    np.testing.assert_array_equal(_run(session), plain)
    assert not _forms(graph)
    calls = []
    monkeypatch.setattr(ort, "InferenceSession",
                        lambda path, *a, **k: calls.append(Path(path).name) or real(path, *a, **k))
    onnx_session(graph, keep_optimized=True)
    assert calls == [graph.name]  # not written (and refused) again at every load


def test_forms_of_other_onnx_runtime_versions_keep_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two installations sharing a models folder do not remove each other's form."""
    graph = tmp_path / "textual.int8.onnx"
    _write_graph(graph)
    names = []
    for i, version in enumerate(("1.30.0", "1.31.0", "1.32.0")):
        monkeypatch.setattr(optimized_graph, "_version_tag", lambda v=version: v)
        onnx_session(graph, keep_optimized=True)
        form = optimized_graph.cached_form(graph)
        assert form is not None
        os.utime(form, (1_000_000 + i, 1_000_000 + i))  # written in this order
        names.append(form.name)
    assert [p.name for p in _forms(graph)] == sorted(names[1:])  # the newest other stays


def test_a_graph_too_large_to_write_out_is_not_kept(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    graph = tmp_path / "visual.fp32.onnx"
    _write_graph(graph)
    monkeypatch.setattr(optimized_graph, "MAX_CACHED_BYTES", graph.stat().st_size - 1)
    np.testing.assert_array_equal(_run(onnx_session(graph, keep_optimized=True)),
                                  _run(onnx_session(graph)))
    assert not _forms(graph)


def test_removing_a_graph_removes_its_forms(tmp_path: Path) -> None:
    from imagesearch.core.runtime_measure import _remove_unused

    for name in ("visual.fp32.onnx", "visual.int8.onnx", "textual.int8.onnx"):
        _write_graph(tmp_path / name)
        onnx_session(tmp_path / name, keep_optimized=True)
    (tmp_path / "visual.fp32.onnx.123.partial").write_bytes(b"left by a killed load")
    _remove_unused(tmp_path, "onnx-int8", "onnx-int8")
    assert not _forms(tmp_path / "visual.fp32.onnx")
    assert not (tmp_path / "visual.fp32.onnx.123.partial").exists()
    assert len(_forms(tmp_path / "visual.int8.onnx")) == 1
    assert len(_forms(tmp_path / "textual.int8.onnx")) == 1


def test_a_write_cut_short_is_tried_again_at_the_next_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph, plain = _graph_and_answer(tmp_path / "visual.int8.onnx")

    def full_disk(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(optimized_graph.os, "replace", full_disk)
        np.testing.assert_array_equal(_run(onnx_session(graph, keep_optimized=True)), plain)
    assert not optimized_graph.siblings(graph)  # no form, no marker, no partial file
    np.testing.assert_array_equal(_run(onnx_session(graph, keep_optimized=True)), plain)
    assert len(_forms(graph)) == 1


def test_the_form_is_as_readable_as_its_graph_and_young_partials_are_left_alone(
        tmp_path: Path) -> None:
    graph, _ = _graph_and_answer(tmp_path / "textual.int8.onnx")
    graph.chmod(0o640)
    young = tmp_path / f"{graph.name}.other-process.partial"
    old = tmp_path / f"{graph.name}.killed-long-ago.partial"
    for path in (young, old):
        path.write_bytes(b"being written")
    os.utime(old, (1_000_000, 1_000_000))
    onnx_session(graph, keep_optimized=True)
    (form,) = _forms(graph)
    if os.name == "posix":
        assert form.stat().st_mode & 0o777 == 0o640
    assert young.exists() and not old.exists()
