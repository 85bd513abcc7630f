"""The leaderboard ranks a sweep by the objectives, mode and space its parent run recorded,
and says so when the spec now says otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ftray.tracking.tags import OBJECTIVES, PARENT_RUN_ID, ROLE, TRIAL_ID, TRIAL_STATUS
from tests.conftest import SPECS, run_cli

SPEC = str(SPECS / "trigger_tiny.yaml")


@pytest.fixture
def maximised(tmp_path: Path) -> dict[str, str]:
    """A sweep that maximised trigger_score over lora.r, as MLflow holds it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("trigger-tiny")
    parent = client.create_run(
        experiment,
        run_name="sweep-x",
        tags={ROLE: "sweep", OBJECTIVES: json.dumps([{"metric": "trigger_score", "mode": "max"}])},
    )
    client.log_param(parent.info.run_id, "space.lora.r", "{'choice': [4, 8]}")
    for trial, score, rank in (("aaaa", 0.25, "4"), ("bbbb", 0.75, "8")):
        run = client.create_run(
            experiment,
            tags={
                PARENT_RUN_ID: parent.info.run_id,
                ROLE: "trial",
                TRIAL_ID: trial,
                TRIAL_STATUS: "completed",
            },
        )
        client.log_metric(run.info.run_id, "trigger_score", score, step=1)
        client.log_param(run.info.run_id, "lora.r", rank)
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent.info.run_id)
    return {"MLFLOW_TRACKING_URI": uri}


def board(env: dict[str, str], *overrides: str):
    sets = [part for override in overrides for part in ("--set", override)]
    return run_cli("leaderboard", SPEC, *sets, env=env)


def test_an_edited_mode_neither_reranks_nor_goes_unsaid(maximised: dict[str, str]) -> None:
    result = board(maximised, "search.mode=min")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("2 trials, max trigger_score"), lines[0]
    assert lines[3].split()[1] == "bbbb", result.stdout
    assert result.stderr.strip() == (
        "[ftray] warning: the spec now says min trigger_score; sweep sweep-x ran with max "
        "trigger_score and is ranked by that"
    )


def test_an_objective_the_sweep_did_not_record_is_said(maximised: dict[str, str]) -> None:
    result = board(maximised, "search.objective=false_trigger_rate", "search.mode=min")
    assert result.returncode == 0, result.stderr
    assert "0.75" in result.stdout.splitlines()[3], result.stdout
    assert "the spec now says min false_trigger_rate; sweep sweep-x ran with max" in result.stderr


def test_columns_are_the_space_the_sweep_searched(maximised: dict[str, str]) -> None:
    result = board(maximised, "search.space={lora.alpha: {choice: [8, 16]}}")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[1].split()
    assert header[-1] == "lora.r" and "lora.alpha" not in header, header
    assert result.stdout.splitlines()[3].split()[-1] == "8"
    assert result.stderr == "", "the objectives did not change: nothing to say"
