"""`ftray sweep --each-step` before anything starts (bad arguments exit 2 without Ray or
torch), and how `leaderboard` and `--resume` read an each-step run recorded in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ftray.config import load_spec
from ftray.errors import InputError
from ftray.sweep.steps import prepare_each_step
from ftray.tracking.leaderboard import render_leaderboard
from ftray.tracking.store import latest_sweep_run
from ftray.tracking.tags import PARENT_RUN_ID, ROLE, STEP, STEPS, TRIAL_ID, TRIAL_STATUS
from tests.conftest import SPECS, run_cli

STEPS_SPEC = SPECS / "pipeline_steps_tiny.yaml"


def sweep_error(*args: str) -> str:
    result = run_cli("sweep", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "HEAVY-IMPORT" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    return line


def test_each_step_needs_a_task_with_steps() -> None:
    line = sweep_error(str(SPECS / "trigger_tiny.yaml"), "--each-step")
    assert line.startswith(f"error: {SPECS / 'trigger_tiny.yaml'}:")
    assert "task.kind 'trigger' has no steps" in line


def test_an_unknown_step_is_bad_input() -> None:
    line = sweep_error(str(STEPS_SPEC), "--step", "characters", "--step", "villains")
    assert (
        "--step 'villains' is not one of task.steps (characters, relationships, event_types)"
        in (line)
    )


def test_each_step_specs_restrict_the_task_and_name_the_registered_model() -> None:
    sweeps = prepare_each_step(load_spec(STEPS_SPEC), ["relationships", "characters"])
    assert [s.step for s in sweeps] == ["relationships", "characters"]
    first = sweeps[0]
    assert first.spec.task.only_step == "relationships"
    assert first.spec.registered_model_name == "pipeline-steps-tiny-relationships"
    assert first.spec.name == "pipeline-steps-tiny"
    assert {c.condition for c in first.task.eval_cases()} == {"relationships"}


def test_a_step_name_that_cannot_name_a_model_is_bad_input(tmp_path: Path) -> None:
    text = STEPS_SPEC.read_text().replace("    event_types:\n", "    event types:\n")
    text = text.replace("../datasets", str(SPECS.parent / "datasets"))
    (tmp_path / "spec.yaml").write_text(text)
    spec = load_spec(tmp_path / "spec.yaml")
    with pytest.raises(InputError) as info:
        prepare_each_step(spec)
    [problem] = info.value.problems
    assert problem.line == 17 and "step name 'event types' cannot name a registered model" in (
        problem.message
    )


def record_each_step_run(client: MlflowClient, steps: list[str]) -> str:
    """An each-step run as a sweep records it: a parent, a sweep per step, a trial each."""
    experiment = client.create_experiment("pipeline-steps-tiny")
    outer = client.create_run(
        experiment, run_name="each-step-1", tags={ROLE: "each-step", STEPS: json.dumps(steps)}
    )
    goals = json.dumps([{"metric": "pipeline_score", "mode": "max"}])
    for number, step in enumerate(steps):
        sweep = client.create_run(
            experiment,
            run_name=f"{step}-1",
            tags={
                ROLE: "step",
                STEP: step,
                PARENT_RUN_ID: outer.info.run_id,
                "ftray.objectives": goals,
            },
        )
        trial = client.create_run(
            experiment,
            tags={
                ROLE: "trial",
                PARENT_RUN_ID: sweep.info.run_id,
                TRIAL_ID: f"trial{number}",
                TRIAL_STATUS: "completed",
            },
        )
        client.log_metric(trial.info.run_id, "pipeline_score", 0.5 + number / 4)
        client.log_metric(trial.info.run_id, f"schema_valid/{step}", 0.5 + number / 4)
        for run in (trial, sweep):
            client.set_terminated(run.info.run_id)
    return outer.info.run_id


def test_leaderboard_shows_each_step_of_the_last_each_step_run(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    outer = record_each_step_run(client, ["characters", "relationships"])
    spec = load_spec(STEPS_SPEC)
    assert latest_sweep_run(client, spec).info.run_id == outer
    board = render_leaderboard(client, spec)
    assert board is not None and board.startswith(f"each-step run each-step-1 ({outer})")
    characters, relationships = board.split("\n\n")[1:]
    assert characters.startswith("step characters: sweep characters-1")
    assert "trial0" in characters and "trial1" not in characters
    assert relationships.startswith("step relationships: sweep relationships-1")
    assert "trial1" in relationships and "0.75" in relationships


def test_resume_tells_an_each_step_run_from_a_sweep(tmp_path: Path) -> None:
    from ftray.sweep.each_step import each_step_run_to_resume
    from ftray.sweep.resume import sweep_to_continue
    from ftray.tasks import load_task

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    outer = record_each_step_run(client, ["characters", "relationships"])
    spec = load_spec(STEPS_SPEC)
    with pytest.raises(InputError, match="resume it with .* --each-step --resume"):
        sweep_to_continue(spec, load_task(spec), client, uri, resume=True, new=False)
    with pytest.raises(InputError, match="swept the steps characters, relationships, not"):
        each_step_run_to_resume(spec, client, uri, ["characters"])
    found = each_step_run_to_resume(spec, client, uri, ["characters", "relationships"])
    assert found.info.run_id == outer


@pytest.mark.parametrize(
    "dimension",
    [
        "task.only_step: {choice: [characters, relationships]}",
        "task.steps.characters.data: {choice: [a.jsonl, b.jsonl]}",
    ],
)
def test_the_step_and_its_data_cannot_be_searched(dimension: str) -> None:
    from ftray.sweep.space import search_problems
    from ftray.tasks import load_task

    key, _, value = dimension.partition(": ")
    spec = load_spec(STEPS_SPEC, [f"search.space={{'{key}': {value}}}"])
    [problem] = search_problems(spec, load_task(spec))
    assert f"'{key}' cannot be searched" in problem.message


def test_a_step_spec_warns_only_as_its_spec_does() -> None:
    from ftray.sweep.space import search_warnings
    from ftray.sweep.steps import step_spec

    spec = load_spec(STEPS_SPEC, ["search.scheduler=fifo"])
    assert search_warnings(spec) == []
    restricted = step_spec(spec, "characters")
    assert search_warnings(restricted) == []
    assert restricted.search == spec.search and restricted.lora == spec.lora
    with_prune = load_spec(STEPS_SPEC, ["search.scheduler=fifo", "search.prune.grace_period=2"])
    assert len(search_warnings(step_spec(with_prune, "characters"))) == 1


def test_a_new_each_step_run_while_the_last_is_unfinished_needs_new(tmp_path: Path) -> None:
    from ftray.sweep.each_step import run_each_step
    from ftray.sweep.resume import UnfinishedSweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    outer = record_each_step_run(client, ["characters", "relationships"])  # left RUNNING
    spec = load_spec(STEPS_SPEC, [f"tracking.uri={uri}"])
    with pytest.raises(UnfinishedSweep) as info:
        run_each_step(spec, [])
    assert info.value.parent.info.run_id == outer
    started = run_each_step(spec, [], new=True)
    assert started.run_id != outer and client.get_run(started.run_id).info.status == "FINISHED"


def test_the_cli_says_how_to_continue_the_unfinished_each_step_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    record_each_step_run(MlflowClient(uri), ["relationships", "characters"])  # left RUNNING
    result = run_cli(
        "sweep",
        str(STEPS_SPEC),
        *("--each-step", "--set", "search.num_trials=2"),
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [row for row in result.stderr.splitlines() if row.startswith("error:")]
    assert "(each-step-1) did not finish (RUNNING); continue it with: ftray sweep " in line
    assert line.endswith(
        "--set search.num_trials=2 --step relationships --step characters --resume, "
        "or start a new sweep with --new"
    ), line
    assert "Traceback" not in result.stderr and result.stdout == ""
