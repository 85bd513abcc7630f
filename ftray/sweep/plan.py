"""`ftray plan`: what a spec's sweep is expected to spend (GPU-hours, cost) and how long it is
expected to take, before it is submitted.

From the spec's last finished sweep in the tracking store when there is one: its trials'
wall seconds per epoch (start-up, checkpoints and evaluation included, as `tracking.spend`
counts them), its epochs per trial (what ASHA's stops left of the planned epochs, scaled to
the epochs planned now), how much longer its trials phase took than its trial-seconds over
its concurrency, as a share of one trial's time (the last trials running with slots idle),
and its fixed phases
(preparation, Ray's start, registration, plots). Without one, from a probe: one trial of
one epoch of the spec's fixed values, timed here, every trial assumed to run all its epochs.

The plan also says how far off the same estimate was on the store's earlier sweeps of the
spec: each sweep predicted from the one before it, against its recorded wall time.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from ftray.config.spec import Spec
from ftray.tracking.spend import Meter

PHASES = ("prepare", "ray_start", "tracking_setup", "trials", "registration", "plots")


@dataclass(frozen=True)
class Basis:
    """What an estimate is made from."""

    seconds_per_epoch: float
    """One trial's wall seconds per epoch it ran."""
    epoch_share: float
    """Epochs a trial ran over the epochs it planned (1 without ASHA's stops)."""
    tail: float
    """How much longer the trials phase took than trial-seconds / concurrency, as a share of
    one trial's mean wall time: the last trials running with slots idle beside them, and
    trials waiting to start (about one trial's time, whatever the sweep's size)."""
    fixed_seconds: float
    """The sweep's wall time outside its trials phase."""
    source: str


@dataclass(frozen=True)
class Plan:
    trials: int
    concurrent: int
    epochs: int
    meter: Meter
    basis: Basis

    @property
    def trial_seconds(self) -> float:
        b = self.basis
        return self.trials * self.epochs * b.epoch_share * b.seconds_per_epoch

    @property
    def trial_wall(self) -> float:
        """One trial's expected wall time."""
        b = self.basis
        return self.epochs * b.epoch_share * b.seconds_per_epoch

    @property
    def wall_seconds(self) -> float:
        phase = self.trial_seconds / self.concurrent + self.basis.tail * self.trial_wall
        return phase + self.basis.fixed_seconds

    def spend(self) -> dict[str, float]:
        return self.meter.charge(self.trial_seconds)


def concurrency(spec: Spec, gpus: float | None) -> int:
    """Trials at once: the spec's `max_concurrent_trials`, fewer when `gpus` cannot hold as
    many GPU trials."""
    assert spec.search is not None
    wanted = spec.search.max_concurrent_trials
    per_trial = spec.resources_per_trial.gpu
    if gpus is None or per_trial <= 0:
        return wanted
    return max(1, min(wanted, int(gpus // per_trial)))


def sweep_record(client: Any, parent: Any) -> dict[str, float] | None:
    """What a finished sweep's parent run says about its time: trials, epochs (planned and
    run), trial-seconds, concurrency and phases; None when it recorded too little."""
    from ftray.sweep.resume import recorded_spec

    metrics, params = parent.data.metrics, parent.data.params
    recorded = recorded_spec(client, parent) or {}
    resources = recorded.get("resources_per_trial") or {}
    gpu, cpu = float(resources.get("gpu", 0) or 0), float(resources.get("cpu", 1) or 1)
    units, hours = (gpu, metrics.get("gpu_hours")) if gpu > 0 else (cpu, metrics.get("cpu_hours"))
    phases = {p: metrics.get(f"time/{p}") for p in PHASES}
    trials = sum(metrics.get(f"trials_{s}", 0.0) for s in ("completed", "pruned", "failed"))
    epochs = metrics.get("epochs_trained", 0.0)
    planned = float((recorded.get("train") or {}).get("epochs", 0) or 0)
    if hours is None or not units or phases["trials"] is None or not trials or not epochs:
        return None
    if not planned:
        return None
    return {
        "trials": trials,
        "epochs": epochs,
        "planned": planned,
        "trial_seconds": hours * 3600 / units,
        "concurrent": float(params.get("search.max_concurrent_trials", 1)),
        "trials_phase": phases["trials"],
        "wall": sum(v for v in phases.values() if v is not None),
    }


def basis_of(record: dict[str, float], name: str) -> Basis:
    per_epoch = record["trial_seconds"] / record["epochs"]
    ideal = record["trial_seconds"] / record["concurrent"]
    per_trial = record["trial_seconds"] / record["trials"]
    return Basis(
        seconds_per_epoch=per_epoch,
        epoch_share=record["epochs"] / (record["trials"] * record["planned"]),
        tail=max(0.0, record["trials_phase"] - ideal) / per_trial,
        fixed_seconds=record["wall"] - record["trials_phase"],
        source=(
            f"sweep {name}: {record['trials']:g} trials, {record['epochs']:g} epochs run of "
            f"{record['trials'] * record['planned']:g} planned, {per_epoch:.3g} s per epoch"
        ),
    )


def finished_sweeps(client: Any, spec: Spec) -> list[Any]:
    """The spec's finished sweeps (parent runs), oldest first."""
    from ftray.tracking.tags import ROLE

    experiment = client.get_experiment_by_name(spec.name)
    if experiment is None:
        return []
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{ROLE}` = 'sweep' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        max_results=200,
    )
    return list(runs)


def past_errors(records: list[tuple[str, dict[str, float]]]) -> list[float]:
    """|estimate - actual| / actual of each sweep's wall time predicted from the one before."""
    errors = []
    for (before_name, before), (_, after) in zip(records, records[1:], strict=False):
        plan = Plan(
            trials=int(after["trials"]),
            concurrent=int(after["concurrent"]),
            epochs=int(after["planned"]),
            meter=Meter("cpu", 1.0),
            basis=basis_of(before, before_name),
        )
        estimate = plan.wall_seconds
        if after["wall"] > 0:
            errors.append(abs(estimate - after["wall"]) / after["wall"])
    return errors


def probe_basis(spec: Spec) -> Basis:
    """One trial of one epoch of the spec's fixed values, timed in this process."""
    import tempfile
    from pathlib import Path

    from ftray.training.trial import train_trial

    probe = spec.with_values({"train.epochs": 1})
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ftray-plan-") as folder:
        train_trial(probe, Path(folder))
    seconds = time.monotonic() - started
    return Basis(
        seconds_per_epoch=seconds,
        epoch_share=1.0,
        tail=1.0,
        fixed_seconds=30.0,
        source=(
            f"a probe trial of 1 epoch here ({seconds:.1f} s, its start-up included): no sweep "
            "of this spec in the store, so every trial is taken to run all its epochs, and "
            "start-up and wrap-up to take 30 s"
        ),
    )


def make_plan(spec: Spec, client: Any, gpus: float | None = None) -> tuple[Plan, str]:
    """The plan, and how far off such estimates were on the store's earlier sweeps."""
    assert spec.search is not None
    records = []
    for parent in finished_sweeps(client, spec) if client is not None else []:
        record = sweep_record(client, parent)
        if record is not None:
            records.append((parent.info.run_name, record))
    basis = basis_of(records[-1][1], records[-1][0]) if records else probe_basis(spec)
    plan = Plan(
        trials=spec.search.num_trials,
        concurrent=concurrency(spec, gpus),
        epochs=spec.train.epochs,
        meter=Meter.of(spec),
        basis=basis,
    )
    errors = past_errors(records)
    if errors:
        checked = (
            f"the same estimate on the store's earlier sweeps of this spec (each from the one "
            f"before): off by {statistics.median(errors):.0%} (median of {len(errors)}), "
            f"{max(errors):.0%} at most"
        )
    else:
        checked = "no two finished sweeps of this spec in the store to check such estimates on"
    return plan, checked


def render_plan(spec: Spec, plan: Plan, checked: str) -> str:
    """The lines `ftray plan` prints."""
    spend = plan.spend()
    hours = spend[plan.meter.hours_metric]
    units = f"{plan.meter.units:g} {plan.meter.unit.upper()}"
    lines = [
        f"plan: {spec.name}: {plan.trials} trials of {plan.epochs} epochs, {plan.concurrent} at "
        f"a time, {units} each",
        f"expected: {hours:.3g} {plan.meter.label}"
        + (f", cost {spend['cost']:.2f}" if "cost" in spend else "")
        + f", wall time {_duration(plan.wall_seconds)}"
        f" ({_duration(plan.wall_seconds - plan.basis.fixed_seconds)} of trials)",
        f"from: {plan.basis.source}",
        f"checked: {checked}",
    ]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"
