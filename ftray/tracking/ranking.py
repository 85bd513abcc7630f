"""The one order of a sweep's trials, best first.

The sweep picks its winner by it (and registers that trial), the leaderboard prints its
rows in it, so the leaderboard's row 1 is the registered trial, ties included. It is a total
order: two trials equal on every metric it reads are still told apart by their trial ids,
so neither the order in which Ray Tune or MLflow happens to list trials nor a rerun of
`ftray leaderboard` changes it.

1. Trials the select rule may register first: finished (completed before pruned), with a
   value of the rule's metric, meeting every `where` condition. Then the others, completed,
   pruned, then the rest (failed, killed).
2. The rule's metric, in its mode; then the sweep's other objectives, in the order the spec
   lists them (so among trials tied on the first, a trial on the Pareto front comes before
   one it dominates); then the rule's `tie_break` metrics.
3. `eval_loss`, lower first.
4. The trial id, ascending.

A value that is missing or NaN comes after every value of the same metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ftray.config.search import Objective, SelectRule
from ftray.tracking.tags import TrialStatus

STATUS_RANK = {TrialStatus.COMPLETED.value: 0, TrialStatus.PRUNED.value: 1}
LAST_RESORT = Objective(metric="eval_loss", mode="min")
"""Every task reports it each epoch, so it tells apart trials that tie on everything else."""


def metric_value(metrics: Mapping[str, Any], metric: str) -> float:
    """`metrics[metric]` as a float; NaN when it is missing or not a number."""
    found = metrics.get(metric)
    if isinstance(found, bool) or not isinstance(found, int | float):
        return math.nan
    return float(found)


def selectable(status: str, metrics: Mapping[str, Any], rule: SelectRule) -> bool:
    """Whether the select rule may register this trial: finished, with a value of the rule's
    metric, meeting every `where` condition."""
    return (
        status in STATUS_RANK
        and not math.isnan(metric_value(metrics, rule.metric))
        and rule.admits(metrics)
    )


def ranked_metrics(goals: tuple[Objective, ...], rule: SelectRule) -> list[Objective]:
    """The metrics trials are compared on, first to last: the rule's metric, the other
    objectives, the rule's tie-break, then eval_loss (each metric once, where it first
    appears)."""
    order: list[Objective] = []
    for goal in (rule.objective, *goals, *rule.tie_break, LAST_RESORT):
        if all(goal.metric != seen.metric for seen in order):
            order.append(goal)
    return order


def rank_key(
    status: str,
    metrics: Mapping[str, Any],
    trial_id: str,
    goals: tuple[Objective, ...],
    rule: SelectRule,
) -> tuple[Any, ...]:
    """Ascending sort key of a trial (its status, last metrics and id) in a sweep with
    objectives `goals` and select rule `rule`: the order described in this module."""
    return (
        0 if selectable(status, metrics, rule) else 1,
        STATUS_RANK.get(status, 2),
        *(
            goal.sort_key(metric_value(metrics, goal.metric))
            for goal in ranked_metrics(goals, rule)
        ),
        trial_id,
    )
