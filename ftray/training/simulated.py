"""Simulated trials: learning curves recorded from real trials, replayed without a model.

A spec with `model.backend: simulated` runs every part of a sweep for real (Ray Tune, Optuna,
ASHA, the trainable, epoch checkpoints, MLflow runs, leaderboard, plots) except the training
and evaluation inside a trial: each epoch waits `model.simulation.epoch_seconds` and reports
the metrics of the trial's configuration looked up in a file of recorded curves
(`bench/record_curves.py` writes them from real trials of a spec's space). Nothing here
imports torch or transformers, and a simulated trial never touches a GPU it was given.

How a configuration gets its curve (`CurveModel`):
- each searched dimension is scaled to [0, 1] by its distribution in the recorded space
  (log scale for `loguniform`, the position among the choices for `choice`);
- a configuration recorded with the trial's seed replays that recording as it is;
- any other takes, epoch by epoch, the inverse-distance weighted mean of the `NEIGHBOURS`
  nearest recorded configurations (each the mean over its recorded seeds), plus the noise
  measured between seeds: one recorded trial's deviation from its configuration's mean,
  every epoch and metric of it together (scaled by sqrt(n / (n - 1)) for a configuration of
  n seeds, so its spread is the seeds' standard deviation), drawn from the configurations
  recorded with several seeds. Behaviour metrics are kept within [0, 1], losses >= 0. The
  draw depends on the configuration and seed only, so a resumed trial reports the same
  curve.

Drawing a whole recorded deviation keeps what Gaussian noise would lose: the flips of a
behaviour metric from one epoch to the next, and the metrics moving together. What it does
not model: exact relations between metrics (a simulated `trigger_score` is near, not
exactly, the min of its two accuracies), a trial run for fewer epochs than recorded (its
learning-rate schedule would differ: it reads the first epochs of the longer curve),
parameters the recording did not vary, and time other than the fixed seconds per epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ftray.config.spec import Spec, flatten
from ftray.log import get_logger
from ftray.training.checkpoint import (
    EPOCH_METRICS,
    EPOCH_SAMPLES,
    SIMULATION,
    checkpoint_report,
    write_manifest,
)
from ftray.training.report import EpochHook, EpochReport

log = get_logger()

NEIGHBOURS = 3
"""How many recorded configurations an unrecorded one's curve is drawn from."""


class CurvesProblem(ValueError):
    """A curves file that cannot serve a spec (unreadable, too few epochs, a metric missing)."""


@dataclass(frozen=True)
class Recording:
    """One recorded trial: its searched values, its seed and every epoch's metrics."""

    config: dict[str, Any]
    seed: int
    epochs: list[dict[str, float]]


class CurveModel:
    """The recorded curves of one spec's space, and the curve of any configuration."""

    def __init__(self, data: dict[str, Any], source: str = "<curves>") -> None:
        try:
            self.space: dict[str, dict[str, Any]] = dict(data["space"])
            self.recordings = [
                Recording(dict(t["config"]), int(t["seed"]), [dict(e) for e in t["epochs"]])
                for t in data["trials"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise CurvesProblem(
                f"{source} is not a curves file ({exc!r} missing or malformed)"
            ) from None
        if not self.recordings:
            raise CurvesProblem(f"{source} records no trial")
        self.source = source
        self.epochs = min(len(r.epochs) for r in self.recordings)
        self.metrics = sorted(set.intersection(*(set(r.epochs[0]) for r in self.recordings)))
        by_config: dict[str, list[Recording]] = {}
        for recording in self.recordings:
            by_config.setdefault(self._key(recording.config), []).append(recording)
        self.configs = [(group[0].config, group) for group in by_config.values()]
        self.noise = self._measured_noise()
        self.deviations = self._deviations()

    @staticmethod
    def _key(config: dict[str, Any]) -> str:
        return json.dumps(config, sort_keys=True)

    def scaled(self, config: dict[str, Any]) -> list[float]:
        """The configuration's searched values, each scaled to [0, 1] by its distribution."""
        out = []
        for dim, dist in sorted(self.space.items()):
            (kind, bounds), value = next(iter(dist.items())), config[dim]
            if kind == "choice":
                choices = list(bounds)
                at = choices.index(value) if value in choices else _nearest_index(choices, value)
                out.append(at / (len(choices) - 1) if len(choices) > 1 else 0.0)
            elif kind == "loguniform":
                low, high = math.log(bounds[0]), math.log(bounds[1])
                out.append((math.log(value) - low) / (high - low) if high > low else 0.0)
            else:  # uniform, int
                low, high = float(bounds[0]), float(bounds[1])
                out.append((float(value) - low) / (high - low) if high > low else 0.0)
        return out

    def _measured_noise(self) -> dict[str, list[float]]:
        """Per metric and epoch, the standard deviation between seeds of one configuration,
        pooled over the configurations recorded with several (0 when none was)."""
        sums = {m: [0.0] * self.epochs for m in self.metrics}
        count = 0
        for _, group in self.configs:
            if len(group) < 2:
                continue
            for metric in self.metrics:
                for epoch in range(self.epochs):
                    values = [r.epochs[epoch][metric] for r in group]
                    mean = sum(values) / len(values)
                    sums[metric][epoch] += sum((v - mean) ** 2 for v in values) / (len(values) - 1)
            count += 1
        return {m: [math.sqrt(v / count) if count else 0.0 for v in sums[m]] for m in self.metrics}

    def _deviations(self) -> list[list[dict[str, float]]]:
        """Every recorded trial of a configuration recorded with several seeds, as its
        deviation from that configuration's mean, scaled to the seeds' spread."""
        out = []
        for _, group in self.configs:
            if len(group) < 2:
                continue
            scale = math.sqrt(len(group) / (len(group) - 1))
            for recording in group:
                out.append(
                    [
                        {
                            m: scale
                            * (
                                recording.epochs[epoch][m]
                                - sum(r.epochs[epoch][m] for r in group) / len(group)
                            )
                            for m in self.metrics
                        }
                        for epoch in range(self.epochs)
                    ]
                )
        return out

    def curve(self, config: dict[str, Any], seed: int) -> list[dict[str, float]]:
        """Every epoch's metrics for `config` (its searched values) trained with `seed`."""
        missing = [dim for dim in self.space if dim not in config]
        if missing:
            raise CurvesProblem(f"{self.source}: the trial has no value for {', '.join(missing)}")
        wanted = {dim: config[dim] for dim in self.space}
        for recorded, group in self.configs:
            if self._key(recorded) == self._key(wanted):
                for recording in group:
                    if recording.seed == seed:
                        return [dict(e) for e in recording.epochs[: self.epochs]]
        here = self.scaled(wanted)
        ranked = sorted(
            (math.dist(here, self.scaled(recorded)), group) for recorded, group in self.configs
        )[:NEIGHBOURS]
        weights = [1.0 / (distance + 1e-6) for distance, _ in ranked]
        total = sum(weights)
        rng = random.Random(hashlib.sha256(f"{self._key(wanted)}|{seed}".encode()).hexdigest())
        deviation = rng.choice(self.deviations) if self.deviations else None
        curve = []
        for epoch in range(self.epochs):
            values = {}
            for metric in self.metrics:
                mean = (
                    sum(
                        w * sum(r.epochs[epoch][metric] for r in group) / len(group)
                        for w, (_, group) in zip(weights, ranked, strict=True)
                    )
                    / total
                )
                value = mean + (deviation[epoch][metric] if deviation else 0.0)
                high = math.inf if "loss" in metric else 1.0
                values[metric] = min(max(value, 0.0), high)
            curve.append(values)
        return curve


def _nearest_index(choices: list[Any], value: Any) -> int:
    """The position of the choice nearest a numeric value the recording did not try."""
    try:
        return min(range(len(choices)), key=lambda i: abs(float(choices[i]) - float(value)))
    except (TypeError, ValueError):
        return 0


@cache
def _curves_at(path: str, mtime_ns: int) -> CurveModel:
    del mtime_ns  # part of the cache key: a file written again is read again
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CurvesProblem(f"cannot read the curves file {path}: {exc}") from None
    return CurveModel(data, path)


def load_curves(path: str) -> CurveModel:
    """The curves recorded in `path` (read once per process while the file is unchanged)."""
    try:
        mtime = Path(path).stat().st_mtime_ns
    except OSError as exc:
        raise CurvesProblem(f"cannot read the curves file {path}: {exc.strerror}") from None
    return _curves_at(path, mtime)


def curves_problem(spec: Spec, epochs: int, metrics: list[str]) -> str | None:
    """Why the spec's curves cannot simulate its trials (`epochs` at most, reporting
    `metrics`), or None."""
    assert spec.model.simulation is not None
    try:
        model = load_curves(spec.model.simulation.curves)
    except CurvesProblem as exc:
        return str(exc)
    if epochs > model.epochs:
        return (
            f"{model.source} records {model.epochs} epochs per trial; a trial may run "
            f"{epochs}: lower train.epochs or record longer curves"
        )
    absent = [m for m in metrics if m not in model.metrics]
    if absent:
        return f"{model.source} has no {', '.join(absent)} (it records {', '.join(model.metrics)})"
    searched = set(spec.search.space) if spec.search is not None else set()
    unknown = sorted(searched - set(model.space) - {"train.seed"})
    if unknown:
        return (
            f"the sweep searches {', '.join(unknown)}, which {model.source} did not vary "
            f"(it varies {', '.join(sorted(model.space))})"
        )
    return None


def write_simulated_checkpoint(
    folder: Path, epoch: int, metrics: dict[str, float], record: dict[str, Any]
) -> None:
    """An epoch checkpoint of a simulated trial: its metrics, no samples, what it simulated
    (`record`), and the manifest, so that a retried trial resumes from it as from a real one."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / EPOCH_METRICS).write_text(json.dumps({"epoch": epoch, **metrics}) + "\n")
    (folder / EPOCH_SAMPLES).write_text("")
    (folder / SIMULATION).write_text(json.dumps(record, sort_keys=True) + "\n")
    write_manifest(folder)


def simulate_trial(
    spec: Spec, out: Path, on_epoch: EpochHook | None, resume_from: Path | None
) -> EpochReport:
    """The simulated trial of `spec` (after `resume_from`'s epoch, when given): one
    `EpochReport` per epoch, as `train_trial` reports them; the last one returned."""
    simulation = spec.model.simulation
    assert simulation is not None
    model = load_curves(simulation.curves)
    values = flatten(spec)
    config = {dim: values.get(dim) for dim in model.space}
    seed = spec.train.training_seed
    curve = model.curve(config, seed)
    if spec.train.epochs > len(curve):
        raise CurvesProblem(
            f"{model.source} records {len(curve)} epochs; the trial asks {spec.train.epochs}"
        )
    first = checkpoint_report(resume_from)[0] + 1 if resume_from is not None else 1
    record = {"curves": simulation.curves, "config": config, "seed": seed}
    report: EpochReport | None = None
    started = time.monotonic()
    for epoch in range(first, spec.train.epochs + 1):
        mark = time.monotonic()
        time.sleep(simulation.epoch_seconds)
        slept = time.monotonic()
        metrics = curve[epoch - 1]
        folder = out / "checkpoints" / f"epoch-{epoch}"
        write_simulated_checkpoint(folder, epoch, metrics, record)
        seconds = {
            "train": round(slept - mark, 3),
            "evaluate": 0.0,
            "checkpoint": round(time.monotonic() - slept, 3),
        }
        report = EpochReport(epoch, metrics, folder, [], seconds)
        with (out / "epochs.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"epoch": epoch, **metrics, "seconds": seconds}) + "\n")
        shown = " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if "/" not in k)
        log.info(
            f"epoch {epoch}/{spec.train.epochs} ({time.monotonic() - started:.0f}s, simulated) "
            f"{shown}"
        )
        if on_epoch is not None and on_epoch(report):
            break
    if report is None:
        raise CurvesProblem("nothing to simulate: the trial's epochs were all done")
    return report
