"""What trials and sweeps cost: GPU-hours (CPU-hours for CPU trials) and money.

A trial holds its declared resources from the moment its worker starts it until it ends:
loading the base, training, checkpoints and evaluation all count. Tune's `time_total_s`
(the trial's wall time, carried across retries) times the GPUs it asked for is its
GPU-hours; with `resources_per_trial.price_per_hour` (the price of one trial's resources for
an hour) its wall hours times that price is its cost. Both are logged at every epoch, so a
run's history shows the spend growing.

A sweep sums its trials' spend, split by how each ended, and records what it had spent when
its final best first appeared (`<unit>_hours_to_best`): the spend of every trial up to that
moment, finished or still running.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ftray.config.spec import Spec


@dataclass(frozen=True)
class Meter:
    """How a sweep's trials are charged: the resource counted and its price."""

    unit: str
    """`gpu` or `cpu`."""
    units: float
    """How many of it one trial holds."""
    price_per_hour: float | None = None

    @classmethod
    def of(cls, spec: Spec) -> Meter:
        resources = spec.resources_per_trial
        if resources.gpu > 0:
            return cls("gpu", resources.gpu, resources.price_per_hour)
        return cls("cpu", resources.cpu, resources.price_per_hour)

    @property
    def hours_metric(self) -> str:
        """`gpu_hours` or `cpu_hours`."""
        return f"{self.unit}_hours"

    @property
    def label(self) -> str:
        return f"{self.unit.upper()}-hours"

    def charge(self, seconds: float) -> dict[str, float]:
        """A trial's spend after `seconds` of wall time: hours of the unit, and cost."""
        out = {self.hours_metric: self.units * seconds / 3600}
        if self.price_per_hour is not None:
            out["cost"] = self.price_per_hour * seconds / 3600
        return out


@dataclass
class TrialSpend:
    """One trial's wall time as the driver saw it."""

    seconds: float = 0.0
    """Tune's time_total_s at the trial's last report."""
    started_at: float = math.nan
    """Wall-clock time the trial started (its first report, less its time so far)."""
    reported_at: float = math.nan
    """Wall-clock time of the trial's last report."""
    reports: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    """(wall time, the report's metrics) per report."""

    def report(self, now: float, seconds: float, metrics: dict[str, float]) -> None:
        if math.isnan(self.started_at):
            self.started_at = now - seconds
        self.seconds = max(self.seconds, seconds)
        self.reported_at = now
        self.reports.append((now, metrics))

    def seconds_until(self, moment: float) -> float:
        """Wall seconds the trial had held its resources at `moment`."""
        if math.isnan(self.started_at) or moment <= self.started_at:
            return 0.0
        return min(moment, self.reported_at) - self.started_at


def trial_seconds(result: dict[str, Any]) -> float:
    """A Tune result's wall time of the trial so far."""
    value = result.get("time_total_s")
    return float(value) if isinstance(value, int | float) else 0.0


def first_reached(
    spends: Iterable[TrialSpend], metric: str, best: float, mode: str
) -> float | None:
    """The earliest wall time any trial reported `metric` at least as good as `best`."""
    times = [
        when
        for spend in spends
        for when, metrics in spend.reports
        if metric in metrics
        and not math.isnan(metrics[metric])
        and (metrics[metric] >= best if mode == "max" else metrics[metric] <= best)
    ]
    return min(times, default=None)


def sweep_spend(
    meter: Meter,
    by_status: Iterable[tuple[str, TrialSpend]],
    best: tuple[str, float, str] | None,
) -> dict[str, float]:
    """The parent run's spend: `<unit>_hours` and `cost` in total and per status
    (`<unit>_hours_completed`, ...; confirmation trials as `_confirm`), and `<unit>_hours_to_best` when `best` (metric, final
    best value, mode) was reached."""
    trials = list(by_status)
    hours = meter.hours_metric
    out: dict[str, float] = {hours: 0.0}
    if meter.price_per_hour is not None:
        out["cost"] = 0.0
    for status, spend in trials:
        for key, value in meter.charge(spend.seconds).items():
            out[key] = out.get(key, 0.0) + value
            out[f"{key}_{status}"] = out.get(f"{key}_{status}", 0.0) + value
    if best is not None:
        moment = first_reached([s for _, s in trials], *best)
        if moment is not None:
            spent = sum(spend.seconds_until(moment) for _, spend in trials)
            charged = meter.charge(spent)
            out[f"{hours}_to_best"] = charged[hours]
    return out


def describe_spend(metrics: dict[str, float]) -> str | None:
    """`spent 1.25 GPU-hours (completed 0.9, pruned 0.3, failed 0.05), best found after
    0.4; cost 3.10` from a parent run's metrics; None when it recorded none."""
    unit = next((u for u in ("gpu", "cpu") if f"{u}_hours" in metrics), None)
    if unit is None:
        return None
    hours = f"{unit}_hours"
    parts = [
        f"{status} {metrics[f'{hours}_{status}']:.3g}"
        for status in ("completed", "pruned", "failed", "killed", "confirm")
        if metrics.get(f"{hours}_{status}")
    ]
    text = f"spent {metrics[hours]:.3g} {unit.upper()}-hours"
    if parts:
        text += f" ({', '.join(parts)})"
    if f"{hours}_to_best" in metrics:
        text += f"; the final best had appeared after {metrics[f'{hours}_to_best']:.3g}"
    if "cost" in metrics:
        text += f"; cost {metrics['cost']:.2f}"
    return text
