"""Which sweep `ftray sweep` continues, and with which spec.

`--resume` continues the spec's last unfinished sweep with the spec it ran with: the spec
given now (after `--set`) is compared with the one recorded on the parent run (`spec.yaml`)
field by field. A difference in a field that shapes trials is refused (exit 2, one line per
field); the few fields that cannot change a trial are allowed, and the log says what becomes
of them. Without `--resume`, a last sweep that did not finish is not silently left behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftray.config.spec import Spec
from ftray.errors import InputError, Problem
from ftray.log import get_logger
from ftray.redaction import mask_url_passwords
from ftray.sweep.lease import refuse_live
from ftray.tasks import Task
from ftray.tracking.store import latest_sweep_run, spec_document, step_sweep_run
from ftray.tracking.tags import DATASET_SHA256, EACH_STEP_ROLE, ROLE

SPEC_ARTIFACT = "spec.yaml"
"""The resolved spec (after --set, paths absolute, secrets masked) on a sweep's parent run."""
SPLIT_ARTIFACT = "split.json"
"""The held-out split a task that keeps one (chat) stored on a sweep's parent run."""
KEPT = "Ray Tune resumes with the setting it saved with the sweep ({old})"
SAFE_ON_RESUME = {
    "tracking.uri": "the store this sweep is recorded in",
    "tracking.registered_model": "the winner is registered under {new}",
    "storage.tune_path": "Ray Tune's state stays where the sweep keeps it",
    "storage.optuna_url": KEPT,
    "search.max_concurrent_trials": KEPT,
    "search.max_failures": KEPT,
    "search.pending_timeout": KEPT,
    "resources_per_trial.price_per_hour": "every trial's cost is counted at {new} from now on",
}
"""Fields a resumed sweep may be given another value of: none changes what a trial trains or
how it is scored, and what becomes of the new value."""
UNFINISHED = ("RUNNING", "KILLED")
"""Parent-run states of a sweep that did not finish: interrupted (KILLED), or left RUNNING by
a driver that died (or still runs)."""

log = get_logger()


class NothingToResume(Exception):
    """`--resume` found the last sweep already finished."""


class UnfinishedSweep(Exception):
    """A new sweep was asked for while the spec's last sweep has not finished."""

    def __init__(self, parent: Any) -> None:
        self.parent = parent
        super().__init__(parent.info.run_name)


def refuse_unfinished(last: Any | None, new: bool) -> None:
    """When a new sweep (or each-step run) is asked for without `new`: SweepRunning while
    `last`, the spec's latest sweep run, has a live lease, else UnfinishedSweep while it has
    not finished."""
    if new:
        return
    refuse_live(last)
    if last is not None and last.info.status in UNFINISHED:
        raise UnfinishedSweep(last)


def flat_fields(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested spec document as dotted field -> value (lists kept whole)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= flat_fields(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def is_path(value: Any) -> bool:
    """Whether a recorded value is a file path (the spec records them absolute)."""
    return isinstance(value, str) and Path(value.partition("#")[0]).is_absolute()


def spec_differences(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    """field -> (recorded value, current value) for every field that differs. File paths
    are left out: a resubmitted job sees the same files at another absolute path, and what
    they hold is compared by the dataset's sha256."""
    old, new = flat_fields(recorded), flat_fields(current)
    return {
        field: (old.get(field), new.get(field))
        for field in sorted(old.keys() | new.keys())
        if old.get(field) != new.get(field)
        and not (is_path(old.get(field)) and is_path(new.get(field)))
    }


def shown(value: Any) -> str:
    """A spec value as a message shows it."""
    if value is None:
        return "unset"
    return mask_url_passwords(json.dumps(value) if isinstance(value, list | dict) else str(value))


def resume_problems(
    spec: Spec, differences: dict[str, tuple], run_name: str
) -> tuple[list[Problem], list[str]]:
    """(a problem per difference that shapes trials, a note per allowed difference)."""
    problems: list[Problem] = []
    notes: list[str] = []
    for field, (old, new) in differences.items():
        safe = next((why for name, why in SAFE_ON_RESUME.items() if field == name), None)
        if safe is None and field.startswith("storage."):
            safe = KEPT
        if safe is not None:
            notes.append(
                f"{field} is {shown(new)} now and was {shown(old)}: "
                + safe.format(old=shown(old), new=shown(new))
            )
            continue
        if field == "search.num_trials":
            why = (
                f"Ray Tune resumes with the {shown(old)} trials it saved; start a new sweep "
                "with --new for more"
            )
        else:
            why = (
                "--resume continues a sweep with the spec it ran with: give it that value, or "
                "start a new sweep with --new"
            )
        problems.append(
            spec.source.problem(
                tuple(field.split(".")),
                f"{field} is {shown(new)} but sweep {run_name} ran with {shown(old)}; {why}",
            )
        )
    return problems, notes


def recorded_spec(client: Any, parent: Any) -> dict[str, Any] | None:
    """The spec document a sweep recorded on its parent run, or None (an older sweep)."""
    import mlflow
    import yaml

    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=parent.info.run_id, artifact_path=SPEC_ARTIFACT, tracking_uri=client.tracking_uri
        )
    except Exception:  # MlflowException or OSError: the file is not there
        return None
    return yaml.safe_load(Path(local).read_text(encoding="utf-8"))


def check_resume_spec(spec: Spec, task: Task, client: Any, parent: Any) -> None:
    """Refuse (InputError, one line per field) a spec that differs from the one the sweep
    `parent` ran with in a field that shapes trials, or data that changed; log the allowed
    differences."""
    import yaml

    name = parent.info.run_name
    recorded = recorded_spec(client, parent)
    if recorded is None:
        log.warning(f"sweep {name} recorded no {SPEC_ARTIFACT}; resuming without comparing specs")
        return
    current = yaml.safe_load(spec_document(spec))
    problems, notes = resume_problems(spec, spec_differences(recorded, current), name)
    data_then = parent.data.tags.get(DATASET_SHA256)
    if data_then is not None and data_then != task.dataset_sha256:
        problems.append(
            spec.source.problem(
                ("task", "data"),
                f"the task's data changed since sweep {name} ran (sha256 {data_then[:12]}... "
                f"then, {task.dataset_sha256[:12]}... now); --resume continues a sweep on the "
                "data it ran on: restore it, or start a new sweep with --new",
            )
        )
    if problems:
        raise InputError(problems)
    for note in notes:
        log.info(f"resume: {note}")


def sweep_to_continue(
    spec: Spec,
    task: Task,
    client: Any,
    uri: str,
    resume: bool,
    new: bool,
    step_of: Any | None = None,
) -> Any | None:
    """The parent run `--resume` continues (its spec checked), or None for a new sweep.

    `step_of` (a `StepOf`) is one step's sweep of an each-step run: it continues that step's
    sweep in that run (the each-step run decided whether to resume). NothingToResume when the
    last sweep finished; UnfinishedSweep when a new sweep is asked for (without `--new`)
    while the last one has not finished; SweepRunning when the last sweep's driver holds its
    lease (a resume, or a new sweep without `--new`)."""
    if step_of is not None:
        if not resume:
            return None
        last = step_sweep_run(client, step_of.run_id, step_of.step)
        if last is None:
            raise InputError.at(
                spec.source.path,
                None,
                f"each-step run {step_of.run_id} has no sweep of step '{step_of.step}' to resume",
            )
    else:
        last = latest_sweep_run(client, spec)
        if not resume:
            refuse_unfinished(last, new)
            return None
        refuse_live(last)
        if last is None:
            raise InputError.at(
                spec.source.path,
                None,
                f"no earlier sweep of '{spec.name}' at {mask_url_passwords(uri)} to resume; "
                "run without --resume",
            )
        if last.data.tags.get(ROLE) == EACH_STEP_ROLE:
            raise InputError.at(
                spec.source.path,
                None,
                f"the last sweep of '{spec.name}' ran one sweep per step; resume it with "
                f"ftray sweep {spec.source.path} --each-step --resume",
            )
    if last.info.status == "FINISHED":
        raise NothingToResume(last.info.run_id)
    check_resume_spec(spec, task, client, last)
    return last


def with_recorded_stopping(spec: Spec, parent: Any) -> Spec:
    """`spec` with the metric ASHA stops on set to the one the sweep recorded, where this
    ftray's default would pick another (a sweep started by an older ftray resumes with the
    scheduler Tune saved: its runs, plots and log must name that scheduler's metric)."""
    params = parent.data.params
    metric, mode = params.get("search.prune.metric"), params.get("search.prune.mode")
    if spec.search is None or spec.search.scheduler != "asha" or not metric or not mode:
        return spec
    if (spec.stopping.metric, spec.stopping.mode) == (metric, mode):
        return spec
    log.info(
        f"ASHA stops on {mode} {metric}, as this sweep recorded it "
        f"(without a recorded choice it would stop on {spec.stopping})"
    )
    return spec.with_values({"search.prune.metric": metric, "search.prune.mode": mode})


def reuse_stored_split(client: Any, parent_id: str, task: Task) -> dict[str, Any] | None:
    """The split a sweep stored on its parent run, applied to `task` (tasks that keep one):
    a resumed sweep's, or the registering sweep's for an export's re-check."""
    if task.split_record() is None:
        return None
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=parent_id, artifact_path=SPLIT_ARTIFACT, tracking_uri=client.tracking_uri
        )
    except Exception as exc:  # MlflowException or OSError: the file is not there
        raise RuntimeError(
            f"the sweep to resume has no {SPLIT_ARTIFACT} on its parent run {parent_id}; "
            "start a new sweep with --new"
        ) from exc
    record = json.loads(Path(local).read_text(encoding="utf-8"))
    task.reuse_split(record)
    return record
