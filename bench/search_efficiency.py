"""Search that pays off: GPU-epochs until a sweep's best is good, per search method, on
simulated trials.

Each sweep runs `--concurrent` trials at a time on the simulated trials of a shipped spec
(the learning curves recorded from real `tiny` trials in `bench/curves/`, through ftray's
`CurveModel`: a configuration not recorded gets its neighbours' curve plus a measured
deviation). The searchers and schedulers are the real objects:

- `random+fifo`: Optuna's RandomSampler over the spec's space, every trial to its last epoch;
- `tpe+fifo`: ftray's searcher (`build_searcher`: TPE) with Tune's FIFOScheduler;
- `default`: ftray's searcher and scheduler as the spec sets them (TPE + ASHA on
  `search.prune`, defaults unless `--set` changes them);
- `bohb`: Ray Tune's TuneBOHB with HyperBandForBOHB (needs `pip install hpbandster
  ConfigSpace`; skipped with a note when absent), on the same metric ASHA stops on.

Ray Tune's trial loop itself is replaced by a discrete-event simulation of it, so that 20
seeds x 4 methods x 256 trials take minutes, not hours, and every run is reproducible: each
epoch of each trial takes 1 time unit (+-10% jitter), results are handed to the scheduler
(CONTINUE, STOP or PAUSE) and to the searcher in Tune's order (`TuneController.
_process_trial_result` and `stop_trial`: a stopped trial's last result goes to the searcher's
`on_trial_complete` only), a paused trial frees its slot and resumes at its next epoch, and a
free slot takes the scheduler's choice, else a pending trial, else a new suggestion.

For each size (`--trials`) the target is the best final value any sweep of that size reached
(all methods, all seeds); a sweep's cost is the GPU-epochs it had run (all trials, pruned ones
included) when its best completed trial first came within `--within` of the target, and
infinite when it never did. Prints a table per size (median [quartiles] of that cost, how
often the target was reached, the median final best, the median total epochs) and
`search_efficiency[N]: <random+fifo's median cost / default's>` per size, the largest size's
last as `search_efficiency: X`.

    .venv/bin/python bench/search_efficiency.py                      # trigger, 64 and 256
    .venv/bin/python bench/search_efficiency.py --spec search_spaces/pipeline_tiny.yaml
    .venv/bin/python bench/search_efficiency.py --set search.prune.grace_period=2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("random+fifo", "tpe+fifo", "default", "bohb")
PENDING, RUNNING, PAUSED, TERMINATED = "PENDING", "RUNNING", "PAUSED", "TERMINATED"


@dataclass(eq=False)
class SimTrial:
    """What Tune's schedulers read of a trial: its id, config and status (hashable by
    identity, as Tune's Trial is used as a dict key by HyperBand)."""

    trial_id: str
    config: dict[str, Any]
    curve: list[dict[str, float]]
    planned: int
    status: str = PENDING
    epochs_done: int = 0
    last_result: dict[str, Any] = field(default_factory=dict)
    ends_at: float = math.inf
    is_saving: bool = False  # a pause here is instant: never caught saving

    def __str__(self) -> str:
        return self.trial_id


class Controller:
    """The part of Tune's TuneController that schedulers call back into."""

    def __init__(self, searcher: Any, scheduler: Any) -> None:
        self.trials: list[SimTrial] = []
        self.search_alg = SimpleNamespace(searcher=searcher)
        self.scheduler = scheduler

    def get_trials(self) -> list[SimTrial]:
        return self.trials

    def stop_trial(self, trial: SimTrial) -> None:
        """As TuneController.stop_trial."""
        searcher = self.search_alg.searcher
        if trial.status == TERMINATED:
            return
        if trial.status in (PENDING, PAUSED):
            self.scheduler.on_trial_remove(self, trial)
            searcher.on_trial_complete(trial.trial_id)
        else:
            self.scheduler.on_trial_complete(self, trial, dict(trial.last_result))
            searcher.on_trial_complete(trial.trial_id, result=dict(trial.last_result))
        trial.status = TERMINATED
        trial.ends_at = math.inf


@dataclass
class SweepOutcome:
    """One simulated sweep: every completed trial as (GPU-epochs spent by then, value)."""

    completions: list[tuple[int, float]]
    epochs: int
    trials: int


def sweep_spec(spec_path: str, sets: list[str], seed: int, trials: int, method: str) -> Any:
    from ftray.config import load_spec

    curves = ROOT / "bench" / "curves" / f"{Path(spec_path).stem}.json"
    recorded = json.loads(curves.read_text())
    fixed = {k: v for k, v in recorded.get("fixed", {}).items() if k != "train.seed"}
    overrides = [
        "model.backend=simulated",
        f"model.simulation={{curves: {curves}, epoch_seconds: 0}}",
        f"train.epochs={recorded['epochs']}",
        *(f"{k}={json.dumps(v)}" for k, v in fixed.items()),
        f"train.seed={seed}",
        f"search.num_trials={trials}",
        *sets,
    ]
    if method in ("random+fifo", "tpe+fifo"):
        overrides.append("search.scheduler=fifo")
    elif method == "default":
        overrides.append("search.scheduler=asha")
    return load_spec(ROOT / spec_path, overrides)


def tune_space(spec: Any) -> dict[str, Any]:
    """The spec's space as Ray Tune sampling objects (what TuneBOHB converts)."""
    from ray import tune

    out = {}
    for path, dist in spec.search.space.items():
        kind, bounds = next(iter(dist.model_dump(exclude_none=True, by_alias=True).items()))
        if kind == "choice":
            out[path] = tune.choice(list(bounds))
        elif kind == "loguniform":
            out[path] = tune.loguniform(*bounds)
        elif kind == "uniform":
            out[path] = tune.uniform(*bounds)
        elif kind == "int":
            out[path] = tune.randint(bounds[0], bounds[1] + 1)
        else:
            raise SystemExit(f"search_efficiency: no Tune form for {path}: {dist}")
    return out


def searcher_and_scheduler(spec: Any, method: str) -> tuple[Any, Any]:
    from ray.tune.schedulers import FIFOScheduler

    from ftray.sweep.searcher import build_scheduler, build_searcher
    from ftray.sweep.space import max_epochs

    goal = spec.search.goals[0]
    if method == "random+fifo":
        import optuna

        from ftray.sweep.optuna_search import PruneAwareOptunaSearch
        from ftray.sweep.space import optuna_space

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        searcher = PruneAwareOptunaSearch(
            space=optuna_space(spec),
            metric=goal.metric,
            mode=goal.mode,
            sampler=optuna.samplers.RandomSampler(seed=spec.train.seed),
        )
        return searcher, FIFOScheduler()
    if method in ("tpe+fifo", "default"):
        return build_searcher(spec), build_scheduler(spec)
    from ray.tune.schedulers import HyperBandForBOHB
    from ray.tune.search.bohb import TuneBOHB

    stopping = spec.stopping
    searcher = TuneBOHB(
        space=tune_space(spec), metric=stopping.metric, mode=stopping.mode, seed=spec.train.seed
    )
    scheduler = HyperBandForBOHB(
        time_attr="epoch", metric=stopping.metric, mode=stopping.mode, max_t=max_epochs(spec)
    )
    return searcher, scheduler


def simulate(spec: Any, method: str, concurrent: int) -> SweepOutcome:
    """One sweep of `spec` by `method`, as Tune would run it on `concurrent` GPUs."""
    import numpy as np
    from ray.tune.schedulers import TrialScheduler

    from ftray.config.spec import flatten
    from ftray.training.simulated import load_curves

    model = load_curves(spec.model.simulation.curves)
    # BOHB's model (hpbandster) and Tune's bracket choice draw from numpy's global generator.
    np.random.seed(int(hashlib.sha256(f"{method}|{spec.train.seed}".encode()).hexdigest()[:8], 16))
    searcher, scheduler = searcher_and_scheduler(spec, method)
    control = Controller(searcher, scheduler)
    objective = spec.search.goals[0]
    rng = random.Random(f"{method}|{spec.train.seed}")
    wanted = spec.search.num_trials
    now, spent = 0.0, 0
    completions: list[tuple[int, float]] = []

    def start(trial: SimTrial) -> None:
        trial.status = RUNNING
        trial.ends_at = now + rng.uniform(0.9, 1.1)

    def fill() -> None:
        while sum(t.status == RUNNING for t in control.trials) < concurrent:
            chosen = scheduler.choose_trial_to_run(control)
            if chosen is None:
                chosen = next((t for t in control.trials if t.status == PENDING), None)
            if chosen is None and len(control.trials) < wanted:
                trial_id = f"t{len(control.trials):04d}"
                config = searcher.suggest(trial_id)
                if not isinstance(config, dict):
                    return
                trial_spec = spec.with_values(config)
                values = flatten(trial_spec)
                curve = model.curve({d: values.get(d) for d in model.space}, spec.train.seed)
                chosen = SimTrial(trial_id, config, curve, trial_spec.train.epochs)
                control.trials.append(chosen)
                scheduler.on_trial_add(control, chosen)
            if chosen is None:
                return
            start(chosen)

    fill()
    while True:
        running = [t for t in control.trials if t.status == RUNNING]
        if not running:
            break
        trial = min(running, key=lambda t: (t.ends_at, t.trial_id))
        now = trial.ends_at
        trial.epochs_done += 1
        spent += 1
        result = {
            **trial.curve[trial.epochs_done - 1],
            "epoch": trial.epochs_done,
            "epochs_planned": trial.planned,
            "training_iteration": trial.epochs_done,
            "trial_id": trial.trial_id,
            "done": False,
        }
        decision = scheduler.on_trial_result(control, trial, result)
        if decision != TrialScheduler.STOP:
            searcher.on_trial_result(trial.trial_id, result)
        trial.last_result = result
        if trial.status != RUNNING:  # the scheduler stopped it while processing a bracket
            pass
        elif decision == TrialScheduler.STOP or trial.epochs_done >= trial.planned:
            if trial.epochs_done >= trial.planned:
                completions.append((spent, float(result[objective.metric])))
            control.stop_trial(trial)
        elif decision == TrialScheduler.PAUSE:
            trial.status = PAUSED
            trial.ends_at = math.inf
        else:
            trial.ends_at = now + rng.uniform(0.9, 1.1)
        fill()
    for trial in control.trials:  # paused ones no bracket went back to
        control.stop_trial(trial)
    return SweepOutcome(completions, spent, len(control.trials))


def best_after(outcome: SweepOutcome, mode: str) -> float:
    values = [v for _, v in outcome.completions if not math.isnan(v)]
    if not values:
        return math.nan
    return max(values) if mode == "max" else min(values)


def cost_to(outcome: SweepOutcome, target: float, within: float, mode: str) -> float:
    """GPU-epochs spent when the sweep's best completed trial first came within `within`
    of `target`; infinite when it never did (its spend bought no such trial)."""
    for spent, value in outcome.completions:
        if (mode == "max" and value >= target - within) or (
            mode == "min" and value <= target + within
        ):
            return float(spent)
    return math.inf


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """First quartile, median, third quartile (nearest rank; infinities allowed)."""
    ordered = sorted(values)
    at = [ordered[round(q * (len(ordered) - 1))] for q in (0.25, 0.75)]
    return at[0], statistics.median(ordered), at[1]


def bohb_available() -> bool:
    try:
        import ConfigSpace  # noqa: F401
        import hpbandster  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="GPU-epochs until a sweep's best is within reach, per search method, "
        "on simulated trials (see the module docstring).",
    )
    parser.add_argument("--spec", default="search_spaces/trigger_tiny.yaml")
    parser.add_argument("--trials", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--within", type=float, default=0.02)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a spec override for every sweep (e.g. search.prune.grace_period=2)",
    )
    parser.add_argument("--json", type=Path, help="write every sweep's outcome here")
    args = parser.parse_args(argv)
    methods = list(args.methods)
    if "bohb" in methods and not bohb_available():
        print("bohb skipped: pip install hpbandster ConfigSpace to run it", file=sys.stderr)
        methods.remove("bohb")
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set {item}: overrides are written KEY=VALUE")

    import logging

    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    logging.getLogger("hpbandster").setLevel(logging.ERROR)
    report: dict[str, Any] = {"spec": args.spec, "sets": args.set, "sizes": {}}
    efficiency: dict[int, float] = {}
    for size in args.trials:
        outcomes: dict[str, list[SweepOutcome]] = {}
        mode = "max"
        for method in methods:
            started = time.monotonic()
            outcomes[method] = []
            for seed in range(args.seeds):
                spec = sweep_spec(args.spec, args.set, seed, size, method)
                mode = spec.search.goals[0].mode
                outcomes[method].append(simulate(spec, method, args.concurrent))
            print(
                f"  {size} trials, {method}: {args.seeds} sweeps in "
                f"{time.monotonic() - started:.0f} s",
                file=sys.stderr,
            )
        finals = [best_after(o, mode) for runs in outcomes.values() for o in runs]
        finals = [v for v in finals if not math.isnan(v)]
        target = max(finals) if mode == "max" else min(finals)
        print(
            f"\n{args.spec}, {size} trials, {args.concurrent} at a time, {args.seeds} seeds; "
            f"target {target:.4f} (the best any sweep reached) within {args.within}"
        )
        print(
            f"{'method':<12} {'GPU-epochs to target: median [q1, q3]':>40} {'reached':>8} "
            f"{'final best':>11} {'epochs run':>11}"
        )
        medians: dict[str, float] = {}
        sizes_report: dict[str, Any] = {"target": target, "methods": {}}
        for method, runs in outcomes.items():
            spend = [cost_to(o, target, args.within, mode) for o in runs]
            q1, q2, q3 = quartiles(spend)
            medians[method] = q2
            reached = sum(math.isfinite(c) for c in spend)
            final = statistics.median(best_after(o, mode) for o in runs)
            run_epochs = statistics.median(o.epochs for o in runs)
            print(
                f"{method:<12} {f'{q2:.0f} [{q1:.0f}, {q3:.0f}]':>40} "
                f"{f'{reached}/{len(runs)}':>8} {final:>11.4f} {run_epochs:>11.0f}"
            )
            sizes_report["methods"][method] = {
                "cost": [c if math.isfinite(c) else None for c in spend],
                "final_best": [best_after(o, mode) for o in runs],
                "epochs": [o.epochs for o in runs],
            }
        if "random+fifo" in outcomes and "default" in outcomes:
            close = sum(
                (mode == "max" and d >= r - args.within) or (mode == "min" and d <= r + args.within)
                for d, r in zip(
                    sizes_report["methods"]["default"]["final_best"],
                    sizes_report["methods"]["random+fifo"]["final_best"],
                    strict=True,
                )
            )
            print(
                f"default's final best within {args.within} of random+fifo's: "
                f"{close}/{args.seeds} seeds"
            )
            # A default that reaches the target in fewer than half its sweeps has an infinite
            # median cost: its efficiency is 0, whatever it saved.
            efficiency[size] = medians["random+fifo"] / medians["default"]
            sizes_report["search_efficiency"] = efficiency[size]
            sizes_report["default_close_to_random"] = close
        report["sizes"][str(size)] = sizes_report
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    for size, ratio in efficiency.items():
        if not math.isfinite(ratio):
            # A median cost is infinite when a method reached the target in under half its
            # sweeps: the ratio then says which of the two did (inf: only the default).
            print(
                f"search_efficiency[{size}] is {ratio}: "
                + ("neither" if math.isnan(ratio) else "only the default")
                + " reached the target in at least half its sweeps (see 'reached')"
            )
        print(f"search_efficiency[{size}]: {ratio:.2f}")
    if efficiency:
        print(f"search_efficiency: {efficiency[max(efficiency)]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
