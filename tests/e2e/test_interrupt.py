"""Ctrl-C on a real sweep: stdout carries no library output, stderr ends with ftray's own
resume command (not Ray's), and the interrupted sweep is not forgotten by the next
`ftray sweep`, nor resumed with a spec that trains differently."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SPECS, run_cli
from tests.e2e.ray_helpers import (
    SWEEP_ARGS,
    all_runs,
    kill_local_ray_of,
    sweep_env,
    trial_runs,
    wait_for,
)

pytestmark = pytest.mark.slow

SPEC = str(SPECS / "trigger_tiny.yaml")
NOISE = (
    "Configuration for experiment",
    "tensorboard",
    "Tuner.restore",
    "Creating initial MLflow database",
    "new study created",
    "Writing model shards",
    "Failed to fetch metrics",
)


def test_ctrl_c_leaves_only_ftrays_resume_line_and_the_sweep_is_not_forgotten(
    tmp_path: Path,
) -> None:
    env = {**os.environ, **sweep_env(tmp_path)}
    uri = env["MLFLOW_TRACKING_URI"]
    args = ["sweep", SPEC, "--set", "search.num_trials=4", *SWEEP_ARGS]
    MlflowClient(uri).search_experiments()  # the store exists before the driver and polls meet
    out, err = (tmp_path / "stdout").open("w"), (tmp_path / "stderr").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "ftray", *args],
        cwd=tmp_path,
        env=env,
        stdout=out,
        stderr=err,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: any(
                r.data.tags.get("ftray.trial_status") == "completed" for r in trial_runs(uri)
            ),
            400,
            "a finished trial",
        )
        driver.send_signal(signal.SIGINT)
        assert driver.wait(240) == 130
    finally:
        kill_local_ray_of(driver)
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert stdout == "", stdout
    for noise in NOISE:
        assert noise.lower() not in stderr.lower(), stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: sweep interrupted; Ray Tune saved its state at "), last
    assert last.endswith(
        f"Resume with: ftray sweep {SPEC} --set search.num_trials=4 "
        + " ".join(SWEEP_ARGS)
        + " --resume"
    ), last

    # A new sweep is refused in one line that says how to continue this one. (`ftray sweep`
    # starts Ray before it reads the store, hence this check is here, not with the unit tests
    # of tests/unit/test_resume.py.)
    (parent,) = [r for r in all_runs(uri) if r.data.tags.get("ftray.role") == "sweep"]
    again = run_cli(*args, cwd=tmp_path, env=sweep_env(tmp_path))
    assert again.returncode == 2, again.stderr[-3000:]
    assert "Traceback" not in again.stderr and again.stdout == ""
    [line] = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert line == (
        f"error: {SPEC}: the last sweep of 'trigger-tiny' ({parent.info.run_name}) did not "
        f"finish (KILLED); continue it with: ftray sweep {SPEC} --set search.num_trials=4 "
        + " ".join(SWEEP_ARGS)
        + " --resume, or start a new sweep with --new"
    )

    changed = run_cli(
        *args, "--set", "train.epochs=3", "--resume", cwd=tmp_path, env=sweep_env(tmp_path)
    )
    assert changed.returncode == 2, changed.stderr[-3000:]
    assert "--set train.epochs=3: train.epochs is 3 but sweep sweep-" in changed.stderr
    assert "ran with 2" in changed.stderr
