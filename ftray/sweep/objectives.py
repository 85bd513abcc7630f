"""Objectives after the trials ran: each trial's outcome, the Pareto front of the finished
trials (computed by Optuna), and the trial the select rule registers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ftray.config.search import Objective, SelectRule
from ftray.tracking.ranking import rank_key, selectable
from ftray.tracking.tags import TrialStatus


@dataclass
class TrialOutcome:
    """One trial as the leaderboard, the Pareto front and the registry see it."""

    trial_id: str
    run_id: str
    status: TrialStatus
    metrics: dict[str, float]
    epochs: int
    config: dict[str, Any]
    checkpoint: Any = field(default=None, repr=False)
    error: str | None = None
    details: dict[str, str] = field(default_factory=dict)
    """Text the trial reported about itself (backend, node, base_revision)."""

    def value(self, metric: str) -> float:
        """The trial's last value of `metric` (NaN when it never reported one)."""
        found = self.metrics.get(metric)
        return float(found) if isinstance(found, int | float) else math.nan


def ranked(
    outcomes: list[TrialOutcome], goals: tuple[Objective, ...], rule: SelectRule
) -> list[TrialOutcome]:
    """Outcomes best first, in the order the leaderboard prints them (`ranking.rank_key`)."""
    return sorted(
        outcomes, key=lambda o: rank_key(o.status.value, o.metrics, o.trial_id, goals, rule)
    )


def pareto_front(outcomes: list[TrialOutcome], goals: tuple[Objective, ...]) -> set[str]:
    """Trial ids on the Pareto front of the completed trials, by Optuna's own dominance.

    A trial stopped early (pruned) was measured at fewer epochs than the others, so it is
    never on the front; nor is a trial missing a value of some objective.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=["maximize" if g.mode == "max" else "minimize" for g in goals]
    )
    for outcome in outcomes:
        values = [outcome.value(g.metric) for g in goals]
        if outcome.status is TrialStatus.COMPLETED and not any(map(math.isnan, values)):
            study.add_trial(
                optuna.trial.create_trial(values=values, user_attrs={"trial_id": outcome.trial_id})
            )
    if not study.trials:
        return set()
    return {trial.user_attrs["trial_id"] for trial in study.best_trials}


def choose_winner(
    outcomes: list[TrialOutcome], goals: tuple[Objective, ...], rule: SelectRule
) -> TrialOutcome | None:
    """The trial to register: the first in the leaderboard's order (`ranking.rank_key`) that
    the rule may register (finished, with a value of its metric, meeting every `where`
    condition) and that left an adapter; None when none qualifies."""
    candidates = [
        o
        for o in outcomes
        if selectable(o.status.value, o.metrics, rule) and o.checkpoint is not None
    ]
    ordered = ranked(candidates, goals, rule)
    return ordered[0] if ordered else None
