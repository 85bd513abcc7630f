"""GPUs on a cluster: one logical GPU per trial across nodes, and a trial given a GPU that
torch cannot see."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import SPECS, run_cli, sqlite_store
from tests.e2e.ray_helpers import assert_sweep_finished_once, trial_runs

pytestmark = pytest.mark.slow


def test_one_logical_gpu_per_trial_on_a_multi_node_cluster(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})
    try:
        for _ in range(3):
            cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        uri = sqlite_store(tmp_path)
        result = run_cli(
            "sweep",
            str(SPECS / "trigger_tiny.yaml"),
            "--set",
            "search.num_trials=5",
            "--set",
            "search.max_concurrent_trials=5",
            "--set",
            "train.epochs=1",
            "--set",
            "search.scheduler=fifo",
            "--set",
            "resources_per_trial.gpu=1",
            "--set",
            "resources_per_trial.cpu=1",
            cwd=tmp_path,
            env={
                "MLFLOW_TRACKING_URI": uri,
                "RAY_ADDRESS": cluster.address,
                # The GPUs are logical: there is no CUDA behind them.
                "FTRAY_ALLOW_CPU_FALLBACK": "1",
            },
        )
        assert result.returncode == 0, result.stderr[-4000:]
    finally:
        cluster.shutdown()
    runs = assert_sweep_finished_once(uri, 5)
    spans = []
    for run in runs:
        tags = run.data.tags
        assert tags["ftray.backend"] == "peft", "no real CUDA here: auto must pick peft"
        assert tags["ftray.gpu_ids"] != "", "each trial must hold a GPU"
        assert len(tags["ftray.gpu_ids"].split(",")) == 1
        spans.append(
            (run.info.start_time, run.info.end_time, (tags["ftray.node_id"], tags["ftray.gpu_ids"]))
        )
    for i, (start_a, end_a, gpu_a) in enumerate(spans):
        for start_b, end_b, gpu_b in spans[i + 1 :]:
            overlap = start_a < end_b and start_b < end_a
            assert not (overlap and gpu_a == gpu_b), "two trials shared one GPU"
    events = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 3, f"concurrency should equal the 3 GPUs, was {peak}"
    assert len({gpu for _, _, gpu in spans}) == 3


def test_a_trial_given_a_gpu_without_cuda_fails_at_once(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
    try:
        cluster.wait_for_nodes()
        uri = sqlite_store(tmp_path)
        started = time.monotonic()
        result = run_cli(
            "sweep",
            str(SPECS / "trigger_tiny.yaml"),
            "--set",
            "search.num_trials=1",
            "--set",
            "train.epochs=3",
            "--set",
            "resources_per_trial.gpu=1",
            cwd=tmp_path,
            env={"MLFLOW_TRACKING_URI": uri, "RAY_ADDRESS": cluster.address},
        )
        elapsed = time.monotonic() - started
    finally:
        cluster.shutdown()
    assert result.returncode == 1, result.stderr[-4000:]
    assert "error: all 1 trials failed" in result.stderr
    cause = next(line for line in result.stderr.splitlines() if "trial failure:" in line)
    assert "asked for 1 GPU" in cause and "torch sees no CUDA device" in cause, cause
    assert "NVIDIA driver" in cause and "FTRAY_ALLOW_CPU_FALLBACK" in cause
    (run,) = trial_runs(uri)
    assert run.data.tags["ftray.trial_status"] == "failed"
    assert "epoch" not in run.data.metrics, "the trial must fail before training"
    # Failing at once, not retried nor left waiting: unloaded this takes about 40 s, and a
    # trial that waited for a device or was retried would run into run_cli's timeout.
    assert elapsed < 300, f"took {elapsed:.0f}s"
