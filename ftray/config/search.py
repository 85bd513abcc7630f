"""The `search:` section: what a sweep optimises (one or several objectives), which finished
trial it registers (`select`), what ASHA stops trials on (`prune`), and the space Optuna
samples from."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from ftray.config.fields import Float, Frozen, Int

Mode = Literal["max", "min"]
LOSS_METRICS = ("train_loss", "eval_loss")
"""The metrics every task reports each epoch; they move smoothly from the first epoch on,
where behaviour metrics (accuracies, scores) often stay at 0 for a while and then jump."""


class Objective(Frozen):
    """One metric the sweep optimises, and in which direction."""

    metric: str = Field(min_length=1)
    mode: Mode = "max"

    def better(self, new: float, old: float) -> bool:
        """Whether `new` is strictly better than `old` (NaN is never better; anything beats NaN)."""
        if math.isnan(new):
            return False
        if math.isnan(old):
            return True
        return new > old if self.mode == "max" else new < old

    def sort_key(self, value: float) -> float:
        """Ascending sort key: best first, NaN last."""
        if math.isnan(value):
            return math.inf
        return -value if self.mode == "max" else value

    def __str__(self) -> str:
        return f"{self.mode} {self.metric}"


_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
}
_CONDITION = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][\w./-]*)\s*(?P<op><=|>=|==|<|>)\s*"
    r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


class Condition(Frozen):
    """`<metric> <op> <number>`: a bound a trial's last metrics must satisfy."""

    metric: str
    op: Literal["<=", "<", ">=", ">", "=="]
    value: float

    def holds(self, metrics: Mapping[str, Any]) -> bool:
        """Whether `metrics` has this metric, finite, and it satisfies the bound."""
        found = metrics.get(self.metric)
        if not isinstance(found, int | float) or isinstance(found, bool) or math.isnan(found):
            return False
        return _OPERATORS[self.op](float(found), self.value)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


def _parse_condition(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    match = _CONDITION.match(value)
    if match is None:
        raise PydanticCustomError(
            "condition",
            "'{text}' is not a comparison: write <metric> <op> <number>, op one of "
            "<= < >= > ==, e.g. 'false_trigger_rate <= 0.05'",
            {"text": value},
        )
    return {"metric": match["metric"], "op": match["op"], "value": float(match["value"])}


ConditionText = Annotated[Condition, BeforeValidator(_parse_condition)]


def _one_or_many(value: Any) -> Any:
    """`tie_break: {metric, mode}` is shorthand for a list of one."""
    return [value] if isinstance(value, Mapping) else value


class SelectRule(Frozen):
    """Which finished trial is registered: the best on `metric` among those meeting `where`;
    trials equal on it (and on the sweep's other objectives) are told apart by `tie_break`,
    in order (see `ftray.tracking.ranking`)."""

    metric: str = Field(min_length=1)
    mode: Mode = "max"
    where: tuple[ConditionText, ...] = ()
    tie_break: Annotated[tuple[Objective, ...], BeforeValidator(_one_or_many)] = ()

    @property
    def objective(self) -> Objective:
        """The rule's metric and direction as an Objective."""
        return Objective(metric=self.metric, mode=self.mode)

    def admits(self, metrics: Mapping[str, Any]) -> bool:
        """Whether a trial with these last metrics meets every `where` condition."""
        return all(condition.holds(metrics) for condition in self.where)

    def __str__(self) -> str:
        rule = f"{self.mode} {self.metric}"
        if self.where:
            rule += f" where {' and '.join(str(c) for c in self.where)}"
        if self.tie_break:
            rule += f", ties by {', '.join(str(goal) for goal in self.tie_break)}"
        return rule


class PruneSpec(Frozen):
    """What ASHA stops trials on: a metric and its direction, compared at rungs spaced
    `grace_period * reduction_factor**k` epochs apart up to `max_t`.

    Without `metric`: when the first objective is a behaviour metric, its smooth counterpart
    if the task reports one (the trigger task's `trigger_soft_score` for `trigger_score`),
    else eval_loss (min); the objective itself when it is a loss. A metric other than a loss
    needs its `mode`.
    """

    metric: str | None = Field(default=None, min_length=1)
    mode: Mode | None = None
    grace_period: Int | None = Field(default=None, ge=1)
    """The first epoch ASHA compares trials at; default: half of max_t (at least 1), the
    setting that lost fewest good trials in `bench/search_efficiency.py` (README)."""
    reduction_factor: Float = Field(default=2.0, gt=1)
    max_t: Int | None = Field(default=None, ge=1)
    """The last epoch ASHA may stop a trial at; default: the most epochs a trial runs."""

    @model_validator(mode="after")
    def _mode_goes_with_metric(self) -> PruneSpec:
        if self.metric is None and self.mode is not None:
            raise PydanticCustomError(
                "prune",
                "search.prune.mode {mode} needs search.prune.metric: name the metric ASHA "
                "stops on, or remove mode (the default is the task's smooth counterpart of the "
                "objective, or eval_loss, min)",
                {"mode": self.mode},
            )
        if self.metric is not None and self.mode is None and self.metric not in LOSS_METRICS:
            raise PydanticCustomError(
                "prune",
                "search.prune.metric {metric} needs search.prune.mode: max or min",
                {"metric": self.metric},
            )
        return self

    def grace(self, max_t: int) -> int:
        """`grace_period`, or its default for trials ASHA may stop up to epoch `max_t`."""
        return self.grace_period if self.grace_period is not None else max(1, max_t // 2)

    def rungs(self, max_t: int) -> list[float]:
        """The epochs at which ASHA compares trials and may stop one, spaced as Ray's ASHA
        spaces them: grace_period * reduction_factor**k below `max_t` (where every trial
        stops anyway)."""
        rungs: list[float] = []
        epoch = float(self.grace(max_t))
        while epoch < max_t:
            rungs.append(epoch)
            epoch *= self.reduction_factor
        return rungs


class Distribution(Frozen):
    """One search dimension: exactly one of choice, uniform, loguniform, int (inclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    choice: list[Any] | None = Field(default=None, min_length=1)
    uniform: tuple[Float, Float] | None = None
    loguniform: tuple[Float, Float] | None = None
    int_range: tuple[Int, Int] | None = Field(default=None, alias="int")

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [
            name for name, attr in _DISTRIBUTION_ATTRS.items() if getattr(self, attr) is not None
        ]
        if len(given) != 1:
            raise PydanticCustomError(
                "distribution",
                "a search dimension needs exactly one of choice, uniform, loguniform, int (got {given})",
                {"given": ", ".join(given) or "none"},
            )
        kind = given[0]
        if kind != "choice":
            low, high = getattr(self, _DISTRIBUTION_ATTRS[kind])
            if low >= high:
                raise PydanticCustomError(
                    "distribution",
                    "{kind} low={low} must be below high={high}",
                    {"kind": kind, "low": low, "high": high},
                )
            if kind == "loguniform" and low <= 0:
                raise PydanticCustomError(
                    "distribution", "loguniform low={low} must be above 0", {"low": low}
                )
        return self

    @property
    def kind(self) -> Literal["choice", "uniform", "loguniform", "int"]:
        """Which distribution this is."""
        for name, attr in _DISTRIBUTION_ATTRS.items():
            if getattr(self, attr) is not None:
                return name  # type: ignore[return-value]
        raise AssertionError("validated Distribution has no kind")

    def values(self) -> list[Any]:
        """The choices, or [low, high]."""
        return list(getattr(self, _DISTRIBUTION_ATTRS[self.kind]))

    def samples(self) -> list[Any]:
        """Values that stand for everything this dimension can produce: every choice; the
        ends of a range, and for a float range also a value inside it that is not a whole
        number (a range is convex, so a field's bounds hold everywhere when they hold at both
        ends)."""
        values = self.values()
        if self.kind not in ("uniform", "loguniform"):
            return values
        low, high = values
        inside = [low + (high - low) * share for share in (0.3183, 0.5, 0.7071, 0.1)]
        fractional = next((v for v in inside if not float(v).is_integer()), None)
        return [*values, *([fractional] if fractional is not None else [])]

    def value_problem(self, dotted: str, value: Any, error: Mapping[str, Any]) -> str:
        """What is wrong with this dimension, whose `value` for the field `dotted` failed
        validation with the pydantic `error`."""
        if error["type"] == "int_from_float" and self.kind != "choice":
            low, high = self.values()
            return (
                f"{self.kind} [{low:g}, {high:g}] gives values not valid for '{dotted}', which "
                f"takes whole numbers (such as {value:.4g}): write "
                f"{{int: [{math.ceil(low)}, {math.floor(high)}]}} or a choice of integers"
            )
        return f"value {value!r} is not valid for '{dotted}': {error['msg']}"


UNSEARCHABLE = (
    "name",
    "search",
    "tracking",
    "task.kind",
    "task.data",
    "task.steps",
    "task.only_step",
    "model.base",
    "resources_per_trial",
)
"""Fields a search dimension may not vary: they name the sweep, its data, its base model or
where it runs, which every trial of one sweep shares."""


def searchable(dotted: str) -> bool:
    """Whether a search dimension may vary the field `dotted` (see UNSEARCHABLE)."""
    return not any(dotted == p or dotted.startswith(p + ".") for p in UNSEARCHABLE)


_DISTRIBUTION_ATTRS = {
    "choice": "choice",
    "uniform": "uniform",
    "loguniform": "loguniform",
    "int": "int_range",
}


class BudgetSpec(Frozen):
    """What a sweep may spend: one of GPU-hours (CPU-hours for CPU trials), money (needs
    `resources_per_trial.price_per_hour`) or wall-clock hours. The sweep starts no trial
    whose expected spend would pass it, stops its running trials when it is spent, and
    registers the best so far; `num_trials` is then a ceiling."""

    gpu_hours: Float | None = Field(default=None, gt=0)
    cpu_hours: Float | None = Field(default=None, gt=0)
    cost: Float | None = Field(default=None, gt=0)
    wall_hours: Float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetSpec:
        given = [k for k in ("gpu_hours", "cpu_hours", "cost", "wall_hours") if getattr(self, k)]
        if len(given) != 1:
            raise PydanticCustomError(
                "budget",
                "search.budget takes one of gpu_hours, cpu_hours, cost or wall_hours"
                + (f"; it has {', '.join(given)}" if given else ""),
            )
        return self

    @property
    def kind(self) -> str:
        """`gpu_hours`, `cpu_hours`, `cost` or `wall_hours`."""
        return next(k for k in ("gpu_hours", "cpu_hours", "cost", "wall_hours") if getattr(self, k))

    @property
    def limit(self) -> float:
        return float(getattr(self, self.kind))

    def __str__(self) -> str:
        return f"{self.limit:g} {self.kind.replace('_', '-')}"


class ConfirmSpec(Frozen):
    """After the search, the `top_k` best distinct configurations train again with `seeds`
    new run seeds each (`train.run_seed`), as trials of the same sweep; the winner is the
    configuration with the best mean over its seeds, the search's trial included."""

    top_k: Int = Field(default=2, ge=1)
    seeds: Int = Field(default=2, ge=1)


class SearchSpec(Frozen):
    """What the sweep optimises, which trial it registers, and over which space.

    `objective`/`mode` is the one-objective shorthand for `objectives: [{metric, mode}]`.
    With several objectives Optuna samples multi-objective. ASHA stops trials on `prune`
    (`stopping`), which never decides what is registered.
    """

    objective: str | None = Field(default=None, min_length=1)
    mode: Mode | None = None
    objectives: tuple[Objective, ...] | None = Field(default=None, min_length=1)
    select: SelectRule | None = None
    num_trials: Int = Field(default=8, ge=1)
    max_concurrent_trials: Int = Field(default=2, ge=1)
    # Retries of a trial that failed (its worker or node lost, or its code raising), each
    # resuming from the trial's last epoch checkpoint.
    max_failures: Int = Field(default=2, ge=0)
    startup_trials: Int | None = Field(default=None, ge=1)
    """Trials Optuna samples at random before TPE models the results (Optuna's
    `n_startup_trials`); unset, Optuna's default of 10, so a sweep of 10 trials or fewer
    is a random search."""
    scheduler: Literal["asha", "fifo"] = "asha"
    prune: PruneSpec = Field(default_factory=PruneSpec)
    pending_timeout: Float = Field(default=1800, gt=0)
    """Seconds trials may wait for resources while none runs (an autoscaling cluster adding
    nodes); then the sweep stops and fails."""
    space: dict[str, Distribution] = Field(default_factory=dict)
    budget: BudgetSpec | None = None
    confirm: ConfirmSpec | None = None

    @model_validator(mode="after")
    def _one_way_to_name_objectives(self) -> SearchSpec:
        if self.objective is None and self.objectives is None:
            raise PydanticCustomError(
                "objectives",
                "search needs objective: <metric> (with mode: max|min), or objectives: "
                "[{metric: ..., mode: ...}, ...] for several",
            )
        if self.objective is not None and self.objectives is not None:
            raise PydanticCustomError(
                "objectives",
                "search has both objective: and objectives:; keep one (objective: is the "
                "one-objective shorthand)",
            )
        if self.objectives is not None and self.mode is not None:
            raise PydanticCustomError(
                "objectives",
                "search.mode goes with objective:; with objectives: give each entry its own mode",
            )
        metrics = [goal.metric for goal in self.goals]
        repeated = sorted({m for m in metrics if metrics.count(m) > 1})
        if repeated:
            raise PydanticCustomError(
                "objectives",
                "objective {metric} is listed more than once",
                {"metric": ", ".join(repeated)},
            )
        return self

    @property
    def goals(self) -> tuple[Objective, ...]:
        """Every objective, the first one primary."""
        if self.objectives is not None:
            return self.objectives
        return (Objective(metric=self.objective or "", mode=self.mode or "max"),)

    @property
    def primary(self) -> Objective:
        """The first objective."""
        return self.goals[0]

    def stopping(self, smooth_metrics: Mapping[str, str]) -> Objective:
        """The metric ASHA stops trials on: `prune.metric`; else, when the first objective is
        a behaviour metric (step-like: 0 for the first epochs, then a jump), its smooth
        counterpart in `smooth_metrics` (the task's, max), or eval_loss (min) when it has
        none; else the first objective (a loss)."""
        if self.prune.metric is not None:
            return Objective(metric=self.prune.metric, mode=self.prune.mode or "min")
        if self.primary.metric in LOSS_METRICS:
            return self.primary
        if self.primary.mode == "max" and self.primary.metric in smooth_metrics:
            return Objective(metric=smooth_metrics[self.primary.metric], mode="max")
        return Objective(metric="eval_loss", mode="min")

    @property
    def selection(self) -> SelectRule:
        """`select`, else the best trial on the first objective."""
        if self.select is not None:
            return self.select
        return SelectRule(metric=self.primary.metric, mode=self.primary.mode)

    def reported_metrics(self) -> list[tuple[tuple[str | int, ...], str]]:
        """(location in the spec, metric name) of every metric this section refers to."""
        found: list[tuple[tuple[str | int, ...], str]] = []
        if self.objective is not None:
            found.append((("search", "objective"), self.objective))
        for index, goal in enumerate(self.objectives or ()):
            found.append((("search", "objectives", index, "metric"), goal.metric))
        if self.select is not None:
            found.append((("search", "select", "metric"), self.select.metric))
            for index, condition in enumerate(self.select.where):
                found.append((("search", "select", "where", index), condition.metric))
            for index, goal in enumerate(self.select.tie_break):
                found.append((("search", "select", "tie_break", index, "metric"), goal.metric))
        if self.prune.metric is not None:
            found.append((("search", "prune", "metric"), self.prune.metric))
        return found
