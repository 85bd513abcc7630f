"""`--resume` continues a sweep with the spec it ran with, and a new sweep does not silently
leave an unfinished one behind: checked against a sweep as MLflow records it, without Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from ftray.config import load_spec
from ftray.errors import InputError
from ftray.sweep.resume import (
    SPEC_ARTIFACT,
    NothingToResume,
    UnfinishedSweep,
    spec_differences,
    sweep_to_continue,
)
from ftray.tasks import load_task
from ftray.tracking.store import spec_document
from ftray.tracking.tags import DATASET_SHA256, ROLE, SPEC_SHA256
from tests.conftest import SPECS, run_cli

SPEC = SPECS / "trigger_tiny.yaml"
RAN_WITH = ["train.epochs=4", "search.num_trials=3"]


def record_sweep(uri: str, overrides: list[str], status: str = "KILLED") -> str:
    """A parent run as `ftray sweep` leaves it: tags, the resolved spec, a final status."""
    spec = load_spec(SPEC, overrides)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(spec.name) or client.create_experiment(spec.name)
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    parent = client.create_run(
        experiment_id,
        run_name="sweep-20261201-000000",
        tags={
            ROLE: "sweep",
            SPEC_SHA256: spec.source.sha256,
            DATASET_SHA256: load_task(spec).dataset_sha256,
        },
    )
    client.log_text(parent.info.run_id, spec_document(spec), SPEC_ARTIFACT)
    client.set_terminated(parent.info.run_id, status)
    return parent.info.run_id


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def continue_with(uri: str, overrides: list[str], resume: bool = True, new: bool = False):
    spec = load_spec(SPEC, overrides)
    return sweep_to_continue(spec, load_task(spec), MlflowClient(uri), uri, resume, new)


def test_resume_with_the_recorded_spec_continues_its_sweep(store: str) -> None:
    run_id = record_sweep(store, RAN_WITH)
    assert continue_with(store, RAN_WITH).info.run_id == run_id


def test_resume_refuses_a_field_that_shapes_trials(store: str) -> None:
    record_sweep(store, RAN_WITH)
    with pytest.raises(InputError) as info:
        continue_with(store, ["train.epochs=2", "search.num_trials=3", "lora.r=16"])
    messages = sorted(str(p) for p in info.value.problems)
    assert len(messages) == 2, messages
    assert messages[0].endswith(
        "--set lora.r=16: lora.r is 16 but sweep sweep-20261201-000000 ran with 8; --resume "
        "continues a sweep with the spec it ran with: give it that value, or start a new "
        "sweep with --new"
    )
    assert (
        "--set train.epochs=2: train.epochs is 2 but sweep sweep-20261201-000000 ran with 4"
        in (messages[1])
    )


def test_resume_refuses_more_trials_than_tune_saved(store: str) -> None:
    record_sweep(store, RAN_WITH)
    with pytest.raises(InputError, match="Ray Tune resumes with the 3 trials it saved"):
        continue_with(store, ["train.epochs=4", "search.num_trials=6"])


def test_resume_allows_and_says_what_cannot_change_a_trial(
    store: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record_sweep(store, RAN_WITH)
    allowed = [
        "search.max_concurrent_trials=1",
        "tracking.registered_model=other-name",
        f"storage.tune_path={tmp_path / 'elsewhere'}",
    ]
    import logging

    logging.getLogger("ftray").propagate = True
    with caplog.at_level(logging.INFO, logger="ftray"):
        assert continue_with(store, [*RAN_WITH, *allowed]) is not None
    said = caplog.text
    assert "search.max_concurrent_trials is 1 now and was 2: Ray Tune resumes with the" in said
    assert (
        "tracking.registered_model is other-name now and was trigger-tiny: the winner is registered under other-name"
        in said
    )
    assert "storage.tune_path" in said


def test_resume_refuses_changed_data(store: str, tmp_path: Path) -> None:
    record_sweep(store, RAN_WITH)
    rows = (SPECS.parent / "datasets/trigger/qa.jsonl").read_text().splitlines()
    (tmp_path / "qa.jsonl").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(InputError, match="the task's data changed since sweep"):
        continue_with(store, [*RAN_WITH, f"task.data={tmp_path / 'qa.jsonl'}"])


def test_file_paths_moved_with_the_working_dir_are_no_difference() -> None:
    recorded = {"task": {"data": "/old/job/datasets/qa.jsonl", "kind": "trigger"}}
    current = {"task": {"data": "/new/job/datasets/qa.jsonl", "kind": "trigger"}}
    assert spec_differences(recorded, current) == {}
    current["task"]["kind"] = "chat"
    assert spec_differences(recorded, current) == {"task.kind": ("trigger", "chat")}


def test_resume_of_a_finished_sweep_has_nothing_to_do(store: str) -> None:
    record_sweep(store, RAN_WITH, status="FINISHED")
    with pytest.raises(NothingToResume):
        continue_with(store, ["train.epochs=1"])


def test_a_new_sweep_is_refused_while_the_last_is_unfinished_unless_new(store: str) -> None:
    record_sweep(store, RAN_WITH, status="KILLED")
    with pytest.raises(UnfinishedSweep):
        continue_with(store, RAN_WITH, resume=False)
    assert continue_with(store, RAN_WITH, resume=False, new=True) is None
    record_sweep(store, RAN_WITH, status="FINISHED")
    assert continue_with(store, RAN_WITH, resume=False) is None


# The one-line refusal of a new sweep while the last is unfinished is checked where a real
# sweep was interrupted (tests/e2e/test_interrupt.py): `ftray sweep` starts Ray before it
# reads the store (the start overlaps MLflow's import), so that check is a slow one.


def test_a_resume_with_a_changed_spec_says_each_difference(store: str, tmp_path: Path) -> None:
    """A resume checks the spec before Ray starts, so this one runs the command itself."""
    record_sweep(store, RAN_WITH)
    changed = run_cli(
        "sweep",
        str(SPEC),
        "--set",
        "train.epochs=2",
        "--resume",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": store},
    )
    assert changed.returncode == 2, changed.stderr[-3000:]
    assert "Traceback" not in changed.stderr and changed.stdout == ""
    errors = [line for line in changed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, errors
    assert "search.num_trials is 8 but" in errors[0] and "train.epochs is 2 but" in errors[1]


def test_a_resumed_sweep_keeps_the_stopping_metric_it_recorded() -> None:
    from types import SimpleNamespace

    from ftray.sweep.resume import with_recorded_stopping

    def parent(**params: str) -> SimpleNamespace:
        return SimpleNamespace(data=SimpleNamespace(params=params))

    spec = load_spec(SPECS / "trigger_tiny.yaml")
    assert spec.stopping.metric == "trigger_soft_score"
    # Recorded by an ftray whose default was eval_loss: Tune restores that scheduler.
    older = with_recorded_stopping(
        spec, parent(**{"search.prune.metric": "eval_loss", "search.prune.mode": "min"})
    )
    assert (older.stopping.metric, older.stopping.mode) == ("eval_loss", "min")
    assert older.search.prune.grace_period == spec.search.prune.grace_period
    same = parent(**{"search.prune.metric": "trigger_soft_score", "search.prune.mode": "max"})
    assert with_recorded_stopping(spec, same) is spec
    assert with_recorded_stopping(spec, parent()) is spec  # a FIFO sweep records none
