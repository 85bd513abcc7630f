"""`search.budget`: a sweep that stops at what it may spend.

The driver keeps one `Budget` per running sweep (found by its parent run id, as the
recorder is: Tune pickles the searcher and the stopper with its state, and their restored
copies find the live budget the same way). Before Optuna proposes a trial, the searcher asks
whether the budget affords one more: what is spent so far plus what a trial is expected to
spend, from the sweep's own epochs so far (mean seconds per epoch of every trial that
reported, times the epochs a trial plans), must stay within it; no epoch yet, and the trial
starts. When nothing more may start, the search ends and Tune lets the running trials
finish; when the budget is spent, the stopper ends the running trials too. The sweep then
ranks and registers what it has, as a finished sweep.

Spend is what `tracking.spend` records: GPU-hours (CPU-hours), cost, or the sweep's wall
hours since it started.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ray.tune.stopper import Stopper

from ftray.config.search import BudgetSpec
from ftray.log import get_logger
from ftray.tracking.recorder import SweepRecorder
from ftray.tracking.tags import TrialStatus

log = get_logger()


@dataclass
class Budget:
    """What a sweep may spend, and what it has."""

    spec: BudgetSpec
    recorder: SweepRecorder
    planned_epochs: int
    started: float = field(default_factory=time.time)
    """Wall-clock start of the sweep (less what an earlier driver ran, on resume)."""
    declined: int = 0
    """Trials the search did not start because the budget could not afford them."""
    spent_out: bool = False
    """Whether the budget ran out while trials ran (the stopper ended them)."""

    _live: ClassVar[dict[str, Budget]] = {}

    def __post_init__(self) -> None:
        self._live[self.recorder.parent_run_id] = self

    @classmethod
    def for_sweep(cls, parent_run_id: str | None) -> Budget | None:
        return cls._live.get(parent_run_id or "")

    def release(self) -> None:
        self._live.pop(self.recorder.parent_run_id, None)

    def _charge(self, seconds: float) -> float:
        """What `seconds` of one trial's wall time cost, in the budget's unit."""
        charged = self.recorder.meter.charge(seconds)
        return charged.get(self.spec.kind, 0.0) if self.spec.kind != "wall_hours" else 0.0

    def spent(self, now: float | None = None) -> float:
        """What the sweep has spent, in the budget's unit."""
        now = time.time() if now is None else now
        if self.spec.kind == "wall_hours":
            return (now - self.started) / 3600
        total = 0.0
        for record in self.recorder.records.values():
            seconds = record.spend.seconds
            if record.status is TrialStatus.RUNNING and not math.isnan(record.spend.reported_at):
                seconds += max(0.0, now - record.spend.reported_at)  # since its last report
            total += self._charge(seconds)
        return total

    def trial_seconds(self) -> float | None:
        """Expected wall seconds of one trial: the sweep's mean seconds per epoch so far,
        times the epochs a trial plans; None before any epoch."""
        seconds = epochs = 0.0
        for record in self.recorder.records.values():
            if record.epochs > 0:
                seconds += record.spend.seconds
                epochs += record.epochs
        if epochs == 0:
            return None
        return seconds / epochs * self.planned_epochs

    def affords_another(self, now: float | None = None) -> bool:
        """Whether one more trial, started now, is expected to fit in the budget."""
        expected = self.trial_seconds()
        spent = self.spent(now)
        if expected is None:
            return spent < self.spec.limit
        more = expected / 3600 if self.spec.kind == "wall_hours" else self._charge(expected)
        return spent + more <= self.spec.limit

    def exhausted(self, now: float | None = None) -> bool:
        return self.spent(now) >= self.spec.limit

    def decline(self) -> None:
        if self.declined == 0:
            log.info(
                f"budget {self.spec}: {self.spent():.3g} spent; the next trial is expected to "
                "pass it, so no more trials start"
            )
        self.declined += 1

    def summary(self, num_trials: int, started_trials: int) -> dict[str, float]:
        """The parent run's budget metrics."""
        return {
            "budget_limit": self.spec.limit,
            "budget_spent": self.spent(),
            "trials_not_started": max(0, num_trials - started_trials),
        }


class BudgetStopper(Stopper):
    """Ends every running trial once the sweep's budget is spent."""

    def __init__(self, parent_run_id: str) -> None:
        self.parent_run_id = parent_run_id

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        budget = Budget.for_sweep(self.parent_run_id)
        if budget is None or not budget.exhausted():
            return False
        if not budget.spent_out:
            budget.spent_out = True
            log.warning(f"budget {budget.spec} spent: stopping the running trials")
        return True
