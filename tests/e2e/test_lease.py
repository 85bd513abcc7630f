"""A live sweep is never continued twice: while a driver runs, `--resume` and a plain sweep
of the same spec and store exit 2 naming its lease, and the sweep finishes with exactly its
trials, none KILLED. (A driver killed with SIGKILL, resumed once its lease lapses:
tests/e2e/test_cluster.py.)"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SPECS, run_cli
from tests.e2e.ray_helpers import (
    SWEEP_ARGS,
    all_runs,
    assert_sweep_finished_once,
    kill_local_ray_of,
    start_driver,
    sweep_env,
    trial_runs,
    wait_for,
)

pytestmark = pytest.mark.slow


def test_a_live_sweep_is_neither_resumed_nor_started_again_beside_it(tmp_path: Path) -> None:
    env = {**os.environ, **sweep_env(tmp_path)}
    uri = env["MLFLOW_TRACKING_URI"]
    args = ["sweep", str(SPECS / "trigger_tiny.yaml"), "--set", "search.num_trials=3", *SWEEP_ARGS]
    driver = start_driver(args, tmp_path, env, tmp_path / "driver.log")
    refused = {}
    try:
        wait_for(lambda: any(r.info.status == "RUNNING" for r in trial_runs(uri)), 240, "a trial")
        for name, extra in (("resume", ["--resume"]), ("plain", [])):
            refused[name] = run_cli(*args, *extra, cwd=tmp_path, env=sweep_env(tmp_path))
            assert driver.poll() is None, "the first sweep should still run beside them"
        assert driver.wait(600) == 0, (tmp_path / "driver.log").read_text()[-4000:]
    finally:
        kill_local_ray_of(driver)
    [parent] = [r for r in all_runs(uri) if r.data.tags.get("ftray.role") == "sweep"]
    for name, result in refused.items():
        assert result.returncode == 2, (name, result.stderr[-3000:])
        assert "Traceback" not in result.stderr and result.stdout == "", name
        [line] = [row for row in result.stderr.splitlines() if row.startswith("error:")]
        assert f"sweep {parent.info.run_id} is running (host {socket.gethostname()}, " in line
        assert f"pid {driver.pid}, last heartbeat " in line and "wait for it" in line, line
        assert f"kill -INT {driver.pid}" in line, line
        assert "orphaned" not in result.stderr and "KILLED" not in result.stderr, name
    assert_sweep_finished_once(uri, 3)
    assert len(trial_runs(uri)) == 3 and not any(r.info.status == "KILLED" for r in all_runs(uri))
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_completed"] == 3
    assert "ftray.lease" not in parent.data.tags, "the driver lets its lease go when it ends"
    assert len(list(Path(parent.data.tags["ftray.tune_experiment"]).glob("*/params.json"))) == 3
    assert MlflowClient(uri).get_model_version_by_alias("trigger-tiny", "champion")
