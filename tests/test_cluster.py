"""`imagesearch index --cluster`: decoding, embedding and local features on a Ray cluster
that the test starts on this machine (a head with no CPU, and two worker nodes), results
stored by this process; a cancelled run resumes with nothing lost or duplicated."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagesearch.config import Settings
from imagesearch.domain import IndexProgress
from tests.conftest import noise_jpeg
from tests.tiny_model import TINY_MODEL_ID

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    local = Cluster(initialize_head=True,
                    head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        local.add_node(num_cpus=1)
    yield local
    local.shutdown()


@pytest.fixture(scope="module")
def cluster(local_cluster: Any) -> str:
    return str(local_cluster.address)


def _photos(root: Path, count: int) -> Path:
    for i in range(count):
        noise_jpeg(root / f"{i:02d}.jpg", i, size=96)
    return root


def _wait_for_free_cpus(address: str, count: int) -> None:
    """Until the workers of a closed source have given their CPUs back (Ray frees them
    a moment after they are killed)."""
    import time

    import ray

    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < count and time.monotonic() < deadline:
        time.sleep(0.2)


def _vectors(settings: Settings) -> dict[str, np.ndarray]:
    from imagesearch.services.context import build_context

    ctx = build_context(settings, save_delay_s=0.0, background=False)
    try:
        ids, vectors = ctx.catalog.vectors(ctx.models.model_id)
        records = ctx.catalog.photos([int(i) for i in ids])
        return {records[int(i)].path.name: v for i, v in zip(ids, vectors, strict=True)}
    finally:
        ctx.close()


def test_the_cli_indexes_on_the_cluster_as_it_would_here(
        cluster: str, make_settings: Any, tmp_path: Path, models_dir: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from imagesearch.cli.main import main

    monkeypatch.setenv("IMAGESEARCH_MODELS", str(models_dir))
    root = _photos(tmp_path / "photos", 20)
    there = make_settings(library_dir=tmp_path / "on-cluster", precision="fp32")
    here = make_settings(library_dir=tmp_path / "here", precision="fp32")
    for s in (there, here):
        s.save()
    assert main(["--library", str(there.library_dir), "--model", TINY_MODEL_ID, "index",
                 str(root), "--no-progress", "--cluster", cluster]) == 0
    assert "20 added" in capsys.readouterr().out
    assert main(["--library", str(here.library_dir), "--model", TINY_MODEL_ID, "index",
                 str(root), "--no-progress"]) == 0
    remote, local = _vectors(there), _vectors(here)
    assert sorted(remote) == sorted(local) and len(remote) == 20
    for name, vector in local.items():  # the same model on the same pixels
        assert float(np.dot(vector, remote[name])) > 0.999, name
    from imagesearch.services.context import build_context

    ctx = build_context(there, save_delay_s=0.0, background=False)
    try:  # local features were found on the workers too
        assert ctx.catalog.count_missing_features(ctx.local.extractor or "") == 0
    finally:
        ctx.close()


def test_a_cancelled_cluster_run_resumes_with_nothing_lost_or_duplicated(
        cluster: str, make_settings: Any, tmp_path: Path) -> None:
    from imagesearch.services.cluster import ClusterSource
    from imagesearch.services.context import build_context

    root = _photos(tmp_path / "photos", 24)
    settings = make_settings(precision="fp32", batch_size=4)
    ctx = build_context(settings, save_delay_s=0.0, background=False)
    # More workers than free CPUs would never start (and their batches never end).
    source = ClusterSource(settings, cluster, workers=5)
    try:
        assert len(source.workers) == 2  # one per CPU the cluster offers
        ctx.indexing.cluster = source
        ctx.library.add_folder(root)
        cancel = threading.Event()

        def stop_after_first(progress: IndexProgress) -> None:
            if progress.done >= 4:
                cancel.set()

        first = ctx.indexing.run(progress=stop_after_first, cancel=cancel)
        stored = sum(ctx.catalog.counts().values())
        assert first.cancelled and 0 < stored < 24  # stopped part-way, what came back kept
        second = ctx.indexing.run()
        assert second.added == 24 - stored and second.unchanged == stored
    finally:
        ctx.indexing.cluster = None
        source.close()
    try:
        model = ctx.models.model_id
        ids = np.sort(ctx.catalog.vector_ids(model))
        assert len(ids) == 24 and len(np.unique(ids)) == 24
        index = ctx.vectors.index()
        assert index is not None and np.array_equal(np.sort(index.ids()), ids)
    finally:
        ctx.close()


def test_a_node_with_a_gpu_gets_a_gpu_worker_with_cpus_to_feed_it(
        local_cluster: Any, make_settings: Any, tmp_path: Path) -> None:
    import torch

    from imagesearch.services.cluster import ClusterSource
    from imagesearch.services.context import build_context

    # Ray is told this node has a GPU; where torch finds none there (no CUDA on this
    # machine), the worker Ray gives it to says so and embeds on its CPUs.
    node = local_cluster.add_node(num_cpus=2, num_gpus=1)
    try:
        _wait_for_free_cpus(local_cluster.address, 4)
        root = _photos(tmp_path / "photos", 12)
        settings = make_settings(precision="fp32", batch_size=4)
        source = ClusterSource(settings, local_cluster.address)
        try:
            assert [count_each[1:] for count_each in source.plan.gpu_nodes] == [(1, 2)]
            assert source.plan.cpu_workers == 2
            assert source.gpus_unusable == (0 if torch.cuda.is_available() else 1)
            ctx = build_context(settings, save_delay_s=0.0, background=False)
            try:
                ctx.indexing.cluster = source
                ctx.library.add_folder(root)
                assert ctx.indexing.run().added == 12
                assert len(ctx.catalog.vector_ids(ctx.models.model_id)) == 12
            finally:
                ctx.indexing.cluster = None
                ctx.close()
        finally:
            source.close()
        with_cpu_only = make_settings(precision="fp32", device="cpu")
        _wait_for_free_cpus(local_cluster.address, 4)
        source = ClusterSource(with_cpu_only, local_cluster.address)
        try:  # told to use the CPU: every free CPU gets a CPU worker
            assert (source.plan.gpu_workers, source.plan.cpu_workers) == (0, 4)
        finally:
            source.close()
    finally:
        local_cluster.remove_node(node)


def test_workers_are_planned_from_each_nodes_gpus_and_cpus() -> None:
    from imagesearch.services.cluster import plan_workers

    def node(cpus: int, gpus: int = 0, alive: bool = True) -> dict[str, Any]:
        resources = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
        return {"Alive": alive, "Resources": resources}

    def plan(*args: Any, **kwargs: Any) -> tuple[int, list[int], int]:
        found = plan_workers(*args, **kwargs)
        each = [cpus for _, count, cpus in found.gpu_nodes for _ in range(count)]
        return found.gpu_workers, each, found.cpu_workers

    cpus_only = [node(2), node(1)]
    assert plan(cpus_only, 3, True) == (0, [], 3)
    assert plan(cpus_only, 3, True, limit=2) == (0, [], 2)
    gpu_box = [node(8, 2), node(4)]  # 4 CPUs for each GPU there, the rest CPU workers
    assert plan(gpu_box, 12, True) == (2, [4, 4], 4)
    assert plan(gpu_box, 12, False) == (0, [], 12)  # the device is set to cpu
    assert plan(gpu_box, 12, True, limit=3) == (2, [4, 4], 1)  # GPUs first
    assert plan(gpu_box, 12, True, limit=1) == (1, [4], 0)
    assert plan([node(2, 1), node(4)], 6, True) == (1, [2], 4)  # as many CPUs as it has
    assert plan([node(32, 1), node(1, 1)], 33, True) == (2, [4, 1], 28)  # node by node
    assert plan([node(0, 1), node(4)], 4, True) == (0, [], 4)  # no CPU to drive it
    assert plan([node(8, 2, alive=False), node(4)], 4, True) == (0, [], 4)
    assert plan(gpu_box, 6, True) == (1, [4], 2)  # CPUs busy elsewhere: fewer fit
    assert plan_workers(gpu_box, 12, True).describe() == "2 GPU workers (4 CPUs each) " \
        "and 4 CPU workers"


def test_a_wrong_address_is_a_clear_error(settings: Settings) -> None:
    import socket
    import time

    from imagesearch.services.cluster import ClusterError, ClusterSource

    with pytest.raises(ClusterError, match=r"no Ray cluster at 127\.0\.0\.1:9"):
        ClusterSource(settings, "127.0.0.1:9")
    # Something else listens there: Ray alone would retry for many minutes.
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        address = f"127.0.0.1:{other.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ClusterError, match="no answer from a Ray cluster within 8 s"):
            ClusterSource(settings, address, probe_timeout_s=8)
        assert time.monotonic() - started < 30
