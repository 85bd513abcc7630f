"""A worker node lost mid-trial: Tune retries the trial on another node, which resumes from
the trial's last epoch checkpoint, and its child run keeps one history."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SPECS, sqlite_store
from tests.e2e.ray_helpers import trial_runs, wait_for

pytestmark = pytest.mark.slow

EPOCHS = 6


def test_a_trial_whose_node_is_removed_resumes_from_its_last_epoch(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    # Trials cannot run on the head (no CPUs there): only on the worker nodes.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    uri = sqlite_store(tmp_path)
    try:
        doomed = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        driver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ftray",
                "sweep",
                str(SPECS / "trigger_tiny.yaml"),
                "--set",
                "search.num_trials=1",
                "--set",
                f"train.epochs={EPOCHS}",
                "--set",
                "search.scheduler=fifo",
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "MLFLOW_TRACKING_URI": uri,
                "RAY_ADDRESS": cluster.address,
            },
        )

        def reported_two_epochs() -> bool:
            runs = trial_runs(uri)
            return bool(runs) and runs[0].data.metrics.get("epoch", 0) >= 2

        try:
            wait_for(reported_two_epochs, 300, "the trial's second epoch")
            cluster.remove_node(doomed, allow_graceful=False)
            cluster.add_node(num_cpus=1)
            out, err = driver.communicate(timeout=600)
        finally:
            if driver.poll() is None:
                driver.kill()
    finally:
        cluster.shutdown()
    assert driver.returncode == 0, err[-4000:]
    assert "retrying from its last epoch checkpoint" in err, err[-4000:]
    (run,) = trial_runs(uri)
    assert run.data.tags["ftray.trial_status"] == "completed"
    assert run.data.tags["ftray.retries"] == "1"
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "eval_loss")
    steps = [m.step for m in history]
    # Restarted at epoch 1, the retry would log epochs 1.. a second time.
    assert sorted(steps) == list(range(1, EPOCHS + 1)), steps
