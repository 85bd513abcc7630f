"""The demo spec under ASHA's default `search.prune`: trials are stopped on
trigger_soft_score, the smooth counterpart of the objective (never judged on a behaviour
metric that still reads 0), the leaderboard says where, and the Optuna study in its
database holds them as PRUNED. `make demo` itself stops few trials still at 0."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, SPECS, run_cli, sqlite_store

pytestmark = pytest.mark.slow


def test_demo_stops_trials_on_the_smooth_score_and_optuna_holds_them_pruned(tmp_path: Path) -> None:
    uri = sqlite_store(tmp_path)
    optuna_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    # The demo's first four proposals (seed 0), two epochs each. At epoch 1 most trials'
    # trigger_score reads 0 (the answers flip between all-clean and all-triggered in the
    # first epochs); trigger_soft_score already tells them apart there.
    sets = [
        "search.num_trials=4",
        "train.epochs=2",
        f"storage.optuna_url={optuna_url}",
        f"storage.tune_path={tmp_path / 'ray_results'}",
    ]
    result = run_cli(
        "sweep",
        str(SPECS / "trigger_tiny.yaml"),
        *[arg for value in sets for arg in ("--set", value)],
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ASHA stops on max trigger_soft_score at rungs (epochs) 1" in result.stdout, (
        result.stdout
    )

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("trigger-tiny")
    (parent,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`ftray.role` = 'sweep'"
    )
    assert parent.data.params["search.prune.metric"] == "trigger_soft_score"
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`ftray.role` = 'trial'"
    )
    pruned = [r for r in runs if r.data.tags["ftray.trial_status"] == "pruned"]
    assert pruned, [(r.data.params, r.data.metrics) for r in runs]
    for run in pruned:
        # Stopped on the smooth score at a rung, never on a behaviour metric reading 0.
        assert run.data.tags["ftray.stopped_on"] == "trigger_soft_score"
        assert run.data.tags["ftray.stopped_at"] == "1"
        assert 0 < run.data.metrics["trigger_soft_score"] < 1
        line = next(
            row for row in result.stdout.splitlines() if run.data.tags["ftray.trial_id"] in row
        )
        assert "trigger_soft_score" in line and "@ rung 1 (epoch 1)" in line, line
    # A stop is the scheduler's choice, not a failure: every run ends FINISHED.
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    assert sum(r.data.tags.get("ftray.stopped_on") == "trigger_score" for r in runs) == 0

    # The study outlives the sweep: ASHA's stops are PRUNED there, never partial values.
    study = optuna.load_study(study_name=parent.data.tags["ftray.optuna_study"], storage=optuna_url)
    states = sorted(t.state.name for t in study.trials)
    statuses = sorted(r.data.tags["ftray.trial_status"] for r in runs)
    assert states == sorted({"completed": "COMPLETE", "pruned": "PRUNED"}[s] for s in statuses)
    assert all(t.state.name != "PRUNED" or t.last_step == 1 for t in study.trials)


def demo_sets() -> list[str]:
    """The `--set` arguments `make demo` adds to the demo spec (the Makefile's DEMO_SETS)."""
    (line,) = re.findall(r"^DEMO_SETS = (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    return shlex.split(line)


def test_make_demo_stops_few_trials_still_at_zero(tmp_path: Path) -> None:
    # The demo stopped six of eight trials while their trigger_score read 0 (grace 1:
    # ASHA's rungs at epochs 1 and 2 meet nearly every trial at 0 on `tiny`). The demo's
    # space leaves out what never learns in 8 epochs and its grace period is 3 epochs; over
    # runs it stopped 0-2 trials at 0. Which trials ASHA stops depends on timing, hence the
    # margin; with grace 1 on the same space the median was 5.
    uri = sqlite_store(tmp_path)
    result = run_cli(
        "sweep",
        str(SPECS / "trigger_tiny.yaml"),
        *demo_sets(),
        "--set",
        f"storage.tune_path={tmp_path / 'ray_results'}",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ASHA stops on max trigger_soft_score at rungs (epochs) 3, 6" in result.stdout

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("trigger-tiny")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`ftray.role` = 'trial'"
    )
    assert len(runs) == 8, result.stdout
    pruned = [r for r in runs if r.data.tags["ftray.trial_status"] == "pruned"]
    at_zero = [r for r in pruned if r.data.metrics["trigger_score"] == 0]
    # ASHA still saves epochs, and stops few trials whose behaviour has not shown yet.
    assert pruned, result.stdout
    assert len(at_zero) <= 3, result.stdout
    best = max(r.data.metrics["trigger_score"] for r in runs)
    assert best >= 0.75, result.stdout
