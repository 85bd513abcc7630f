"""Checking a spec's search space before anything starts: every dotted path names a real
field, every value a trial could receive validates, and the objective is a metric the
task reports."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ftray.errors import InputError, Problem
from ftray.spec import Spec
from ftray.tasks import Task

UNSEARCHABLE = (
    "name",
    "search",
    "tracking",
    "task.kind",
    "task.data",
    "model.base",
    "resources_per_trial",
)


def _leaf_exists(tree: Any, dotted: str) -> bool:
    node = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return not isinstance(node, dict)


def search_problems(spec: Spec, task: Task) -> list[Problem]:
    """Everything wrong with `spec.search` (empty when it is fine or absent)."""
    if spec.search is None:
        return []
    source = spec.source
    problems: list[Problem] = []
    metrics = task.metric_names()
    if spec.search.objective not in metrics:
        problems.append(
            source.problem(
                ("search", "objective"),
                f"objective '{spec.search.objective}' is not a metric of task '{spec.task.kind}'; "
                f"use one of {', '.join(metrics)}",
            )
        )
    tree = spec.model_dump(by_alias=True)
    for dotted, distribution in spec.search.space.items():
        loc = ("search", "space", dotted)
        if any(dotted == p or dotted.startswith(p + ".") for p in UNSEARCHABLE):
            problems.append(
                source.problem(
                    loc,
                    f"'{dotted}' cannot be searched; search training, LoRA, model or task settings",
                )
            )
            continue
        if not _leaf_exists(tree, dotted):
            problems.append(
                source.problem(
                    loc,
                    f"'{dotted}' is not a field of this spec; write a dotted path such as lora.r or train.learning_rate",
                )
            )
            continue
        for value in distribution.values():
            try:
                spec.with_values({dotted: value})
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"]
                problems.append(
                    source.problem(loc, f"value {value!r} is not valid for '{dotted}': {reason}")
                )
                break
    return problems


def prepare_sweep(spec: Spec) -> Task:
    """The task of a spec that can be swept; InputError when it has no or a bad search section."""
    from ftray.tasks import load_task

    if spec.search is None:
        raise InputError(
            [
                Problem(
                    str(spec.source.path),
                    None,
                    "the spec has no search: section; add one to sweep (see README)",
                )
            ]
        )
    task = load_task(spec)
    check_search(spec, task)
    return task


def check_search(spec: Spec, task: Task) -> None:
    """Raise InputError when the search section has any problem."""
    problems = search_problems(spec, task)
    if problems:
        raise InputError(problems)
