"""`search.budget`: a sweep whose wall-clock budget is too small for its trials stops
starting them, ends as a finished sweep, registers the best so far, exits 0 and says what
it spent; no run is left RUNNING."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SPECS, run_cli
from tests.e2e.ray_helpers import SWEEP_ARGS, all_runs, sweep_env, trial_runs

pytestmark = pytest.mark.slow

BUDGET_SECONDS = 45
TRIALS = 40
"""A tiny trial of one epoch takes 2-20 s here (the first loads the model): the budget has
room for the first, never for all forty."""


def test_a_wall_clock_budget_cuts_the_sweep_and_registers_the_best_so_far(
    tmp_path: Path,
) -> None:
    env = sweep_env(tmp_path)
    uri = env["MLFLOW_TRACKING_URI"]
    result = run_cli(
        "sweep",
        str(SPECS / "trigger_tiny.yaml"),
        *SWEEP_ARGS,
        *("--set", "train.epochs=1"),
        *("--set", f"search.num_trials={TRIALS}"),
        *("--set", f"search.budget={{wall_hours: {BUDGET_SECONDS / 3600:.6f}}}"),
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    [parent] = [r for r in all_runs(uri) if r.data.tags.get("ftray.role") == "sweep"]
    assert parent.info.status == "FINISHED"
    metrics = parent.data.metrics
    trials = trial_runs(uri)
    assert 1 <= len(trials) < TRIALS, len(trials)
    assert metrics["trials_not_started"] == TRIALS - len(trials) > 0
    assert metrics["budget_limit"] == pytest.approx(BUDGET_SECONDS / 3600, rel=1e-3)
    assert metrics["budget_spent"] > 0 and metrics["cpu_hours"] > 0
    assert all(r.info.status != "RUNNING" for r in all_runs(uri))
    completed = [r for r in trials if r.data.tags["ftray.trial_status"] == "completed"]
    assert completed, [r.data.tags["ftray.trial_status"] for r in trials]
    champion = MlflowClient(uri).get_model_version_by_alias("trigger-tiny", "champion")
    assert champion.run_id in {r.info.run_id for r in completed}
    assert "budget 0.0125 wall-hours: " in result.stderr, result.stderr[-3000:]
    started = f"{len(trials)} of {TRIALS} trials started, {TRIALS - len(trials)} not started"
    assert started in result.stderr, result.stderr[-3000:]
    assert "spent " in result.stdout and "CPU-hours" in result.stdout
