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


def _forms(graph: Path) -> list[Path]:
    return sorted(graph.parent.glob(f"{graph.name}.*{optimized_graph.SUFFIX}"))


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files ONNX Runtime is asked to load, in order."""
    import onnxruntime as ort

    paths: list[str] = []
    real = ort.InferenceSession

    def spy(path: str, *args: Any, **kwargs: Any) -> Any:
        paths.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    return paths


def test_the_first_load_keeps_the_optimised_form_and_later_loads_read_it(
        tmp_path: Path, loaded: list[str]) -> None:
    graph = tmp_path / "textual.int8.onnx"
    _write_graph(graph)
    plain = _run(onnx_session(graph))
    first = onnx_session(graph, keep_optimized=True)
    forms = _forms(graph)
    assert len(forms) == 1
    assert not list(tmp_path.glob("*.partial"))
    np.testing.assert_array_equal(_run(first), plain)
    loaded.clear()
    again = onnx_session(graph, keep_optimized=True)
    assert loaded == [forms[0].name]  # the graph itself is not optimised again
    np.testing.assert_array_equal(_run(again), plain)


def test_a_damaged_form_is_written_again(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    graph = tmp_path / "visual.int8.onnx"
    _write_graph(graph)
    plain = _run(onnx_session(graph))
    onnx_session(graph, keep_optimized=True)
    (form,) = _forms(graph)
    form.write_bytes(b"not a graph")
    with caplog.at_level(logging.WARNING, logger="imagesearch.core.optimized_graph"):
        session = onnx_session(graph, keep_optimized=True)
    assert "cannot be loaded" in caplog.text
    np.testing.assert_array_equal(_run(session), plain)
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


def test_where_the_form_cannot_be_written_the_graph_is_loaded_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = tmp_path / "textual.fp32.onnx"
    _write_graph(graph)
    plain = _run(onnx_session(graph))

    def read_only(*_args: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(optimized_graph.os, "replace", read_only)
    session = onnx_session(graph, keep_optimized=True)
    np.testing.assert_array_equal(_run(session), plain)
    assert not _forms(graph) and not list(tmp_path.glob("*.partial"))


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
