"""Spot nodes that vanish, at scale: 40 simulated trials on 4 nodes of declared GPUs; 2 nodes
are removed at random moments and 2 join later. Every trial finishes once, each retried one
resumes from its last epoch checkpoint (none runs an epoch twice), no run is left RUNNING,
and the parent run's counts add up."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, SPECS, sqlite_store
from tests.e2e.ray_helpers import all_runs, assert_sweep_finished_once, trial_runs, wait_for

pytestmark = pytest.mark.slow

TRIALS, EPOCHS, NODES, GPUS_PER_NODE = 40, 4, 4, 2


def test_trials_on_vanishing_nodes_resume_and_finish_once(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    # The head holds no resources: every trial runs on a node that may vanish.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})
    uri = sqlite_store(tmp_path)
    rng = random.Random(0)
    try:
        nodes = [
            cluster.add_node(num_cpus=GPUS_PER_NODE, num_gpus=GPUS_PER_NODE) for _ in range(NODES)
        ]
        cluster.wait_for_nodes()
        driver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ftray",
                "sweep",
                str(SPECS / "trigger_tiny.yaml"),
                *("--set", "model.backend=simulated"),
                *(
                    "--set",
                    "model.simulation={curves: ../bench/curves/trigger_tiny.json, epoch_seconds: 1}",
                ),
                *("--set", f"search.num_trials={TRIALS}"),
                *("--set", f"search.max_concurrent_trials={NODES * GPUS_PER_NODE}"),
                *("--set", "search.scheduler=fifo"),
                *("--set", f"train.epochs={EPOCHS}"),
                *("--set", "resources_per_trial={cpu: 1, gpu: 1}"),
                *("--set", f"storage.tune_path={tmp_path / 'ray_results'}"),
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": uri, "RAY_ADDRESS": cluster.address},
        )
        try:
            # Two nodes vanish at random moments once trials have reported, one after the
            # other; two fresh ones join a little later.
            wait_for(lambda: len(trial_runs(uri)) >= NODES * GPUS_PER_NODE, 300, "the trials")
            for node in rng.sample(nodes, 2):
                time.sleep(rng.uniform(1.0, 6.0))
                cluster.remove_node(node, allow_graceful=False)
            time.sleep(rng.uniform(2.0, 6.0))
            for _ in range(2):
                cluster.add_node(num_cpus=GPUS_PER_NODE, num_gpus=GPUS_PER_NODE)
            out, err = driver.communicate(timeout=900)
        finally:
            if driver.poll() is None:
                driver.kill()
    finally:
        cluster.shutdown()
    assert driver.returncode == 0, err[-4000:]
    assert "retrying from its last epoch checkpoint" in err, err[-4000:]
    finished = assert_sweep_finished_once(uri, TRIALS)
    retried = [r for r in finished if int(r.data.tags.get("ftray.retries", "0")) > 0]
    assert retried, "removing two nodes mid-sweep must have cost some trials their node"
    client = MlflowClient(uri)
    for run in finished:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "trigger_score")]
        # A trial restarted at epoch 1 would log its first epochs a second time.
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (run.data.tags, steps)
    # Tune's own record agrees: no trial ran an epoch twice.
    for result in (tmp_path / "ray_results").glob("*/*/result.json"):
        epochs = [json.loads(line)["epoch"] for line in result.read_text().splitlines() if line]
        assert len(epochs) == len(set(epochs)), (result.parent.name, epochs)
    (parent,) = [r for r in all_runs(uri) if r.data.tags.get("ftray.role") == "sweep"]
    assert parent.data.metrics["trials_completed"] == TRIALS
    assert parent.data.metrics["trials_failed"] == 0
    assert parent.data.metrics["epochs_trained"] == TRIALS * EPOCHS
    assert (ROOT / "bench" / "curves" / "trigger_tiny.json").is_file()
