"""`search.confirm`: after the search, the two best configurations train again with two new
run seeds each, as trials of the same sweep (tagged `ftray.phase=confirm`); the winner is the
configuration with the best mean, registered with its means, standard deviations and seed
counts, and it is the leaderboard's row 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SPECS, run_cli
from tests.e2e.ray_helpers import SWEEP_ARGS, all_runs, sweep_env, trial_runs

pytestmark = pytest.mark.slow


def test_confirmation_trials_and_a_winner_by_its_mean(tmp_path: Path) -> None:
    env = sweep_env(tmp_path)
    uri = env["MLFLOW_TRACKING_URI"]
    result = run_cli(
        "sweep",
        str(SPECS / "trigger_tiny.yaml"),
        *SWEEP_ARGS,
        *("--set", "train.epochs=1"),
        *("--set", "search.num_trials=3"),
        *("--set", "search.confirm={top_k: 2, seeds: 2}"),
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    [parent] = [r for r in all_runs(uri) if r.data.tags.get("ftray.role") == "sweep"]
    runs = trial_runs(uri)
    confirm = [r for r in runs if r.data.tags.get("ftray.phase") == "confirm"]
    search = [r for r in runs if "ftray.phase" not in r.data.tags]
    assert len(search) == 3 and len(confirm) == 4, [r.data.tags for r in runs]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in confirm)
    assert sorted(r.data.params["train.run_seed"] for r in confirm) == ["1", "1", "2", "2"]
    assert all(r.info.status == "FINISHED" for r in runs)

    def config(run) -> str:
        keys = ("lora.r", "train.learning_rate", "task.trigger_ratio")
        return json.dumps({k: run.data.params[k] for k in keys})

    confirmed_configs = {config(r) for r in confirm}
    assert len(confirmed_configs) == 2 and confirmed_configs <= {config(r) for r in search}
    winner_trial = parent.data.tags["ftray.confirmed_trial"]
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("trigger-tiny", "champion")
    winner_run = client.get_run(champion.run_id)
    assert winner_run.data.tags["ftray.trial_id"] == winner_trial
    assert config(winner_run) in confirmed_configs
    for suffix in ("_sd", "_seeds"):
        assert f"| trigger_score{suffix} |" in champion.description, champion.description
    assert "| trigger_score_seeds | 3 |" in champion.description, champion.description
    lines = result.stdout.splitlines()
    assert lines[3].split()[1] == winner_trial, result.stdout
    assert "confirm" in lines[0] or "phase" in lines[1], result.stdout
    assert f"confirmed: trial {winner_trial}'s configuration won on its mean" in result.stdout
    spent = parent.data.metrics
    assert spent["cpu_hours_confirm"] > 0 and spent["cpu_hours_completed"] > 0
    total = sum(r.data.metrics["cpu_hours"] for r in runs)
    assert spent["cpu_hours"] == pytest.approx(total, rel=1e-6)
