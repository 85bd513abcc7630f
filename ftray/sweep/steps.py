"""The steps of `ftray sweep --each-step`: each step's spec (the spec restricted to that
step by `task.only_step`, registering as `<registered_model>-<step>`) and task, checked
before anything starts. Imports no Ray."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ftray.config.spec import Spec
from ftray.errors import InputError, Problem
from ftray.sweep.space import prepare_sweep
from ftray.tasks import Task

_STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class StepSweep:
    """One step's sweep: the spec restricted to the step, and its checked task."""

    step: str
    spec: Spec
    task: Task


def step_spec(spec: Spec, step: str) -> Spec:
    """The spec restricted to `step`, registering its winner as `<registered_model>-<step>`."""
    return spec.with_values(
        {
            "task.only_step": step,
            "tracking.registered_model": f"{spec.registered_model_name}-{step}",
        }
    )


def prepare_each_step(spec: Spec, chosen: list[str] | None = None) -> list[StepSweep]:
    """Each step's spec and task (all of `task.steps`, or the `chosen` ones), checked as
    `prepare_sweep` checks a sweep; InputError before anything starts."""
    steps = spec.task.step_names()
    if not steps:
        raise InputError(
            [
                spec.source.problem(
                    ("task", "kind"),
                    f"--each-step and --step sweep the steps of a pipeline task; task.kind "
                    f"'{spec.task.kind}' has no steps: run ftray sweep without them",
                )
            ]
        )
    problems = [
        Problem(
            str(spec.source.path),
            None,
            f"--step '{name}' is not one of task.steps ({', '.join(steps)})",
        )
        for name in chosen or []
        if name not in steps
    ]
    wanted = list(dict.fromkeys(chosen)) if chosen else list(steps)
    problems += [
        spec.source.problem(
            ("task", "steps", step),
            f"step name '{step}' cannot name a registered model and a Ray Tune run; use "
            "letters, digits, '_', '-' and '.' (starting with a letter or digit)",
        )
        for step in wanted
        if step in steps and not _STEP_NAME.match(step)
    ]
    if problems:
        raise InputError(problems)
    sweeps = []
    for step in wanted:
        restricted = step_spec(spec, step)
        sweeps.append(StepSweep(step, restricted, prepare_sweep(restricted)))
    return sweeps
