"""A real `ftray sweep --each-step`: one sweep per step on a local Ray, under one MLflow
parent run, each step's winner registered as its own model with its own champion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import DATASETS, SPECS, run_cli, sqlite_store

pytestmark = pytest.mark.slow

STEPS = ("characters", "relationships")


def few_rows_spec(folder: Path) -> Path:
    """The per-step sample spec over the first 6 Alpaca rows of each step's file."""
    text = (SPECS / "pipeline_steps_tiny.yaml").read_text()
    for step in ("characters", "relationships", "event_types"):
        source = DATASETS / "pipeline" / "steps" / f"{step}_train.jsonl"
        rows = source.read_text().splitlines()[:6]
        (folder / source.name).write_text("\n".join(rows) + "\n")
        text = text.replace(f"../datasets/pipeline/steps/{source.name}", str(folder / source.name))
    text = text.replace(
        "../datasets/pipeline/schemas.json", str(DATASETS / "pipeline/schemas.json")
    )
    spec = folder / "spec.yaml"
    spec.write_text(text)
    return spec


def test_each_step_sweeps_register_one_model_per_step(tmp_path: Path) -> None:
    uri = sqlite_store(tmp_path)
    spec = few_rows_spec(tmp_path)
    sets = [
        "search.num_trials=2",
        "search.max_concurrent_trials=1",
        "train.epochs=1",
        "search.scheduler=fifo",
    ]
    result = run_cli(
        "sweep",
        str(spec),
        *[arg for value in sets for arg in ("--set", value)],
        *[arg for step in STEPS for arg in ("--step", step)],
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert result.returncode == 0, result.stderr[-4000:]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("pipeline-steps-tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert all(run.info.status == "FINISHED" for run in runs)
    (outer,) = [r for r in runs if r.data.tags["ftray.role"] == "each-step"]
    assert json.loads(outer.data.tags["ftray.steps"]) == list(STEPS)
    assert outer.data.metrics["trials_completed"] == 4
    assert not [r for r in runs if r.data.tags["ftray.role"] == "sweep"]
    sweeps = {r.data.tags["ftray.step"]: r for r in runs if r.data.tags["ftray.role"] == "step"}
    assert set(sweeps) == set(STEPS)
    for step, sweep in sweeps.items():
        assert sweep.data.tags["mlflow.parentRunId"] == outer.info.run_id
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
        assert len(trials) == 2
        assert {t.data.params["task.only_step"] for t in trials} == {step}

        name = f"pipeline-steps-tiny-{step}"
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.run_id in {t.info.run_id for t in trials}
        winner = client.get_run(champion.run_id)
        per_step = {
            key.split("/", 1)[1].removesuffix("_ci_low").removesuffix("_ci_high")
            for key in winner.data.metrics
            if "/" in key
        }
        assert per_step == {step}, sorted(winner.data.metrics)
        assert winner.data.metrics["pipeline_score"] == winner.data.metrics[f"schema_valid/{step}"]
        assert f"champion: models:/{name}@champion" in result.stdout
        assert f"step {step}: sweep {sweep.info.run_name}" in result.stdout
    assert [m.name for m in client.search_registered_models()] == [
        f"pipeline-steps-tiny-{step}" for step in STEPS
    ]

    board = run_cli("leaderboard", str(spec), env={"MLFLOW_TRACKING_URI": uri})
    assert board.returncode == 0, board.stderr
    assert board.stdout.startswith(f"each-step run {outer.info.run_name}")
    assert all(f"step {step}: sweep" in board.stdout for step in STEPS)

    again = run_cli("sweep", str(spec), "--each-step", "--resume", env={"MLFLOW_TRACKING_URI": uri})
    assert again.returncode == 2 and "swept the steps characters, relationships" in again.stderr
