"""The search space: checked before anything starts (every dotted path names a real field,
every value a trial could receive validates, every objective, select and prune metric is one
the task reports, ASHA's rungs fit in the epochs trials run), and turned into Optuna
distributions."""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

from pydantic import ValidationError

from ftray.config.search import Distribution, searchable
from ftray.config.spec import Spec
from ftray.errors import InputError, Problem
from ftray.log import get_logger
from ftray.sweep.resources import local_resource_problems
from ftray.tasks import Task
from ftray.tasks.intervals import is_interval

log = get_logger()


def _leaf_exists(tree: Any, dotted: str) -> bool:
    node = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return not isinstance(node, dict)


def search_problems(spec: Spec, task: Task | None) -> list[Problem]:
    """Everything wrong with `spec.search` (empty when it is fine or absent). Without the
    task (its data did not load), all but whether the metrics it names are the task's."""
    if spec.search is None:
        return []
    source = spec.source
    problems: list[Problem] = []
    metrics = task.metric_names() if task is not None else []
    # Listed without the interval bounds, which every behaviour metric has.
    listed = ", ".join(m for m in metrics if not is_interval(m))
    for loc, metric in spec.search.reported_metrics():
        if task is not None and metric not in metrics:
            what = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in loc[1:])[1:]
            why = task.unreported_reason(metric)
            message = (
                f"{what} '{metric}' is not reported on this data: {why}; task "
                f"'{spec.task.kind}' reports {listed} on it"
                if why
                else f"{what} '{metric}' is not a metric of task '{spec.task.kind}'; "
                f"use one of {listed} (a behaviour metric's 95% interval bounds are "
                "<metric>_ci_low and <metric>_ci_high)"
            )
            problems.append(source.problem(loc, message))
    problems += prune_problems(spec)
    tree = spec.model_dump(by_alias=True)
    for dotted, distribution in spec.search.space.items():
        loc = ("search", "space", dotted)
        if not searchable(dotted):
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
        problem = dimension_problem(spec, dotted, distribution)
        if problem is not None:
            problems.append(source.problem(loc, problem))
    return problems


def dimension_problem(spec: Spec, dotted: str, distribution: Distribution) -> str | None:
    """What is wrong with a value the dimension `dotted` can give a trial, or None."""
    for value in distribution.samples():
        try:
            spec.with_values({dotted: value})
        except ValidationError as exc:
            return distribution.value_problem(dotted, value, exc.errors()[0])
    return None


def _longest(spec: Spec) -> str:
    """Where the most epochs a trial runs comes from, for messages."""
    assert spec.search is not None
    source = "search.space train.epochs" if "train.epochs" in spec.search.space else "train.epochs"
    return f"{max_epochs(spec)}, {source}"


def prune_problems(spec: Spec) -> list[Problem]:
    """ASHA's rungs that cannot fit: a grace period or max_t beyond the epochs trials run."""
    assert spec.search is not None
    prune, source = spec.search.prune, spec.source
    problems: list[Problem] = []
    longest = max_epochs(spec)
    if prune.max_t is not None and prune.max_t > longest:
        problems.append(
            source.problem(
                ("search", "prune", "max_t"),
                f"search.prune.max_t {prune.max_t} is above the most epochs a trial runs "
                f"({_longest(spec)}); ASHA would space its rungs for epochs no trial reaches: "
                f"lower it to at most {longest} or remove it",
            )
        )
    elif prune.grace_period is not None and prune.grace_period > asha_max_t(spec):
        limit = (
            f"search.prune.max_t {prune.max_t}"
            if prune.max_t is not None
            else f"the most epochs a trial runs ({_longest(spec)})"
        )
        problems.append(
            source.problem(
                ("search", "prune", "grace_period"),
                f"search.prune.grace_period {prune.grace_period} is above {limit}; ASHA "
                f"would stop no trial: lower it to at most {asha_max_t(spec)}",
            )
        )
    return problems


def checked_inputs(spec: Spec) -> Task:
    """The spec's task, after every check of its input that needs no tokenizer: the data,
    the search section, and the base model (or the curves of simulated trials). The stages
    do not depend on each other, so their problems are raised together (InputError), not
    one stage per run; the search metrics are checked once the data loads."""
    from ftray.tasks import load_task

    problems: list[Problem] = []
    task: Task | None = None
    try:
        task = load_task(spec)
    except InputError as exc:
        problems += exc.problems
    problems += search_problems(spec, task)
    if spec.model.simulated:
        try:
            check_simulation(spec)
        except InputError as exc:
            problems += exc.problems
    else:  # a simulated trial never loads its base
        problems += base_problems(spec)
    if problems:
        raise InputError(problems)
    assert task is not None
    return task


def base_problems(spec: Spec) -> list[Problem]:
    """A base model this machine cannot load, as a problem (a warning about it is logged)."""
    from ftray.models.sources import base_model_problem

    # With RAY_ADDRESS set the trials load the base on the cluster's nodes, not here.
    error, warning = base_model_problem(spec, local=not os.environ.get("RAY_ADDRESS"))
    if warning is not None:
        log.warning(str(warning))
    return [error] if error is not None else []


def prepare_sweep(spec: Spec) -> Task:
    """The task of a spec that can be swept; InputError, with every problem the checks of
    `checked_inputs` and this machine's resources find, when it has no or a bad search
    section, data or base, or asks for more than a local Ray has."""
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
    try:
        task = checked_inputs(spec)
    except InputError as exc:
        raise InputError(exc.problems + local_resource_problems(spec)) from None
    for warning in search_warnings(spec):
        log.warning(str(warning))
    resources = local_resource_problems(spec)
    if resources:
        raise InputError(resources)
    return task


def search_warnings(spec: Spec) -> list[Problem]:
    """Settings that are allowed but do not do what they say."""
    if spec.search is None:
        return []
    search, source = spec.search, spec.source
    warnings: list[Problem] = []
    wanted, trials = search.max_concurrent_trials, search.num_trials
    if wanted > trials:
        warnings.append(
            source.problem(
                ("search", "max_concurrent_trials"),
                f"search.max_concurrent_trials {wanted} is more than search.num_trials {trials}: "
                f"at most {trials} trials ever run at once; lower it to {trials} or raise num_trials",
            )
        )
    startup = search.startup_trials
    if startup is not None and startup >= trials:
        warnings.append(
            source.problem(
                ("search", "startup_trials"),
                f"search.startup_trials {startup} is not less than search.num_trials {trials}: "
                "every trial is sampled at random and TPE never proposes one; lower it or "
                "raise num_trials",
            )
        )
    if search.scheduler == "fifo" and "prune" in search.model_fields_set:
        warnings.append(
            source.problem(
                ("search", "prune"),
                "search.prune has no effect with scheduler: fifo (no trial is stopped early); "
                "remove it or use scheduler: asha",
            )
        )
    elif (
        search.scheduler == "asha"
        and "prune" in search.model_fields_set
        and search.prune.grace_period == asha_max_t(spec)
    ):
        warnings.append(
            source.problem(
                ("search", "prune", "grace_period"),
                f"search.prune.grace_period {search.prune.grace_period} is the last epoch ASHA "
                "may stop at, so it stops no trial; lower it or use scheduler: fifo",
            )
        )
    if search.scheduler == "asha" and asha_max_t(spec) < max_epochs(spec):
        warnings.append(
            source.problem(
                ("search", "prune", "max_t"),
                f"search.prune.max_t {asha_max_t(spec)} is below the most epochs a trial runs "
                f"({_longest(spec)}): ASHA stops every trial at epoch {asha_max_t(spec)} at the "
                "latest, and such a trial counts as pruned",
            )
        )
    return warnings


def check_search(spec: Spec, task: Task) -> None:
    """Raise InputError when the search section has any problem."""
    problems = search_problems(spec, task)
    if problems:
        raise InputError(problems)


def optuna_distribution(distribution: Distribution) -> Any:
    """The Optuna distribution for one search dimension."""
    import optuna

    kind, values = distribution.kind, distribution.values()
    if kind == "choice":
        return optuna.distributions.CategoricalDistribution(values)
    if kind == "uniform":
        return optuna.distributions.FloatDistribution(values[0], values[1])
    if kind == "loguniform":
        return optuna.distributions.FloatDistribution(values[0], values[1], log=True)
    return optuna.distributions.IntDistribution(values[0], values[1])


def optuna_space(spec: Spec) -> dict[str, Any]:
    """The spec's search space as Optuna distributions, keyed by dotted path."""
    assert spec.search is not None
    return {path: optuna_distribution(d) for path, d in spec.search.space.items()}


def shortest_seq_length(spec: Spec) -> int:
    """The smallest model.max_seq_length any trial can get (it may itself be searched)."""
    searched = spec.search.space.get("model.max_seq_length") if spec.search else None
    if searched is None:
        return spec.model.max_seq_length
    return min(int(value) for value in searched.values())


class CheckedBase(NamedTuple):
    """What `checked_base` prepared, and how long preparing and checking took (the sweep's
    `time/prepare`, whichever of the CLI and `run_sweep` ran it)."""

    path: str
    seconds: float


def check_simulation(spec: Spec) -> None:
    """InputError, at `model.simulation.curves`, when the curves cannot simulate the sweep's
    trials: unreadable, fewer epochs than a trial runs, a metric the search reads missing, or
    a searched parameter they did not vary."""
    from ftray.training.simulated import curves_problem

    search = spec.search
    metrics: list[str] = []
    if search is not None:
        metrics = [goal.metric for goal in search.goals] + [search.selection.metric]
        metrics += [goal.metric for goal in search.selection.tie_break]
        if search.scheduler == "asha":
            metrics.append(spec.stopping.metric)
    epochs = max_epochs(spec) if search is not None else spec.train.epochs
    problem = curves_problem(spec, epochs, list(dict.fromkeys(metrics)))
    if problem:
        where = ("model", "simulation", "curves")
        raise InputError([spec.source.problem(where, f"model.simulation.curves: {problem}")])


def checked_base(spec: Spec, task: Task, label: str) -> CheckedBase:
    """The sweep's base model, prepared (the tiny model is built once, here, not per trial),
    after the last input check before Ray starts: rows that would train nothing in some trial
    exit 2 now, not in every such trial. Simulated trials load no base: nothing to prepare."""
    from ftray.training.trial import check_answer_lengths_locally, prepare_base

    if spec.model.simulated:
        return CheckedBase(spec.model.base, 0.0)
    started = time.monotonic()
    log.info(f"preparing data and base model for {label}")
    base = prepare_base(spec, task)
    check_answer_lengths_locally(spec, task, base, shortest_seq_length(spec))
    return CheckedBase(base, time.monotonic() - started)


def max_epochs(spec: Spec) -> int:
    """The most epochs any trial can run (train.epochs may itself be searched)."""
    assert spec.search is not None
    searched = spec.search.space.get("train.epochs")
    return int(max(searched.values())) if searched else spec.train.epochs


def asha_max_t(spec: Spec) -> int:
    """The last epoch ASHA may stop a trial at: search.prune.max_t, else the most epochs."""
    assert spec.search is not None
    return spec.search.prune.max_t or max_epochs(spec)


def asha_rungs(spec: Spec) -> list[float]:
    """The epochs at which ASHA compares trials and may stop one."""
    assert spec.search is not None
    return spec.search.prune.rungs(asha_max_t(spec))
