r"""Early-stopping savings: ftray's default search (TPE + ASHA with the default `search.prune`)
against random search + FIFO, the same trial budget, on a sample spec (default the trigger
task; `--spec search_spaces/pipeline_tiny.yaml` the pipeline) with the `tiny` model, for
several seeds (`train.seed` seeds the sampler and the training).

Figure per seed: the training epochs each sweep spent until its best completed trial's
objective came within 0.02 of the best the full-budget run (random + FIFO) found, counted
from Tune's per-epoch results in time order (epochs of trials still running count too).

`--prune` compares candidate early-stopping settings against the same FIFO runs, each
written [SCHEDULER/]METRIC[:GRACE[:REDUCTION]][+partial]: METRIC is `default` (the spec's
own `search.prune`), `objective` (the spec's objective and mode) or a loss (`eval_loss`,
min); GRACE and REDUCTION are `search.prune.grace_period` and `.reduction_factor` (default
1 and 2). SCHEDULER is `asha` (ftray's, the default), or one of Ray Tune's others that
ftray does not offer, swapped in for the measurement: `median` (MedianStoppingRule: stops a
trial whose best so far is below the median of the others' running means at the same epoch,
from GRACE on, once 3 trials have reported) or `hyperband` (synchronous HyperBand: brackets
of trials paused at each rung and resumed from their epoch checkpoints, REDUCTION its eta).
`+partial` tells Optuna a stopped trial's last value as a completed one (Ray's stock
OptunaSearch) instead of PRUNED (ftray's): TPE reads the study only after its 10 random
start-up trials, so compare it with `--trials` above 10 (or fewer start-up trials). A
candidate may end with `,KEY=VALUE` spec overrides for its sweeps only, e.g.
`default,search.startup_trials=3` (TPE from the fourth trial; the FIFO runs stay random).

    .venv/bin/python bench/asha_savings.py [--seeds 0 1 2 --trials 8 --epochs 6]
    .venv/bin/python bench/asha_savings.py --prune default eval_loss:2 objective median/default
    .venv/bin/python bench/asha_savings.py --trials 20 --prune default default+partial
    .venv/bin/python bench/asha_savings.py --seeds 0 1 2 3 4 --prune default \
        default,search.startup_trials=3
    .venv/bin/python bench/asha_savings.py --set 'search.space={lora.r: {choice: [8]}}'

`--set KEY=VALUE` overrides the spec for every sweep, FIFO's included.

Prints a table per candidate (median over seeds of the best-value gap to FIFO, of the share
of FIFO's epochs and of the trials stopped while their objective read 0) and
`asha_savings: <epochs(random+FIFO) / epochs(TPE+ASHA)>` last, the median over seeds for
the first candidate. With at most 10 trials Optuna's TPE samples
its first 10 at random, so both sweeps see the same configurations and the figure is ASHA's
alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WITHIN = 0.02
LOSSES = ("eval_loss", "train_loss")
SCHEDULERS = ("asha", "median", "hyperband")

# Runs `ftray sweep` (argv after the variant) with the driver's scheduler or searcher swapped
# for the measurement; the trials' own code is ftray's, unchanged.
LAUNCH = """
import sys
scheduler, partial = sys.argv[1], sys.argv[2] == "partial"
import ftray.sweep.optuna_search as optuna_search
import ftray.sweep.runner as runner
from ftray.sweep.space import asha_max_t

if partial:
    from ray.tune.search.optuna import OptunaSearch
    optuna_search.PruneAwareOptunaSearch = OptunaSearch

def build_scheduler(spec):
    from ray.tune.schedulers import HyperBandScheduler, MedianStoppingRule
    prune, stopping = spec.search.prune, spec.stopping
    if scheduler == "median":
        return MedianStoppingRule(time_attr="epoch", metric=stopping.metric, mode=stopping.mode,
                                  grace_period=prune.grace_period, min_samples_required=3)
    return HyperBandScheduler(time_attr="epoch", metric=stopping.metric, mode=stopping.mode,
                              max_t=asha_max_t(spec), reduction_factor=prune.reduction_factor)

if scheduler != "asha":
    runner.build_scheduler = build_scheduler
from ftray.cli import main
sys.exit(main(sys.argv[3:]))
"""


def candidate_sets(candidate: str) -> tuple[str, dict[str, str]]:
    """A candidate without its trailing `,KEY=VALUE` overrides, and those overrides."""
    head, *items = candidate.split(",")
    sets: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--prune {candidate}: overrides are written ,KEY=VALUE")
        sets[key] = value
    return head, sets


def parse_candidate(candidate: str) -> tuple[str, bool, str]:
    """SCHEDULER, whether `+partial`, and METRIC[:GRACE[:REDUCTION]] of one candidate."""
    candidate = candidate_sets(candidate)[0]
    rest, partial = candidate, candidate.endswith("+partial")
    if partial:
        rest = rest[: -len("+partial")]
    scheduler, _, rest = rest.rpartition("/")
    scheduler = scheduler or "asha"
    if scheduler not in SCHEDULERS:
        raise SystemExit(f"--prune {candidate}: SCHEDULER is one of {', '.join(SCHEDULERS)}")
    return scheduler, partial, rest


def prune_overrides(candidate: str, objective: str, mode: str) -> dict[str, Any]:
    """The `--set` overrides of one `--prune` candidate."""
    sets = candidate_sets(candidate)[1]
    metric, *rest = parse_candidate(candidate)[2].split(":")
    if len(rest) > 2:
        raise SystemExit(f"--prune {candidate}: [SCHEDULER/]METRIC[:GRACE[:REDUCTION]][+partial]")
    overrides: dict[str, Any] = {}
    if metric == "objective":
        overrides.update({"search.prune.metric": objective, "search.prune.mode": mode})
    elif metric in LOSSES:
        overrides.update({"search.prune.metric": metric, "search.prune.mode": "min"})
    elif metric != "default":
        raise SystemExit(f"--prune {candidate}: METRIC is default, objective or a loss")
    if rest:
        overrides["search.prune.grace_period"] = int(rest[0])
    if len(rest) == 2:
        overrides["search.prune.reduction_factor"] = float(rest[1])
    return {**overrides, **sets}


def sweep(
    spec: Path,
    work: Path,
    seed: int,
    trials: int,
    epochs: int,
    scheduler: str,
    extra: dict[str, Any] | None = None,
    variant: tuple[str, bool] = ("asha", False),
) -> list[dict]:
    """Run one sweep; every epoch's Tune result, each with its trial id, in time order.
    `variant`: the scheduler swapped in for ASHA, and whether Optuna is told stopped trials'
    partial values as completed (see LAUNCH)."""
    overrides = {
        "search.num_trials": trials,
        "search.scheduler": scheduler,
        "train.epochs": epochs,
        "train.seed": seed,
        "storage.tune_path": str(work / "ray_results"),
        **(extra or {}),
    }
    if variant == ("asha", False):
        command = [sys.executable, "-m", "ftray", "sweep", str(spec)]
    else:
        swapped, partial = variant
        command = [sys.executable, "-c", LAUNCH, swapped, "partial" if partial else "pruned"]
        command += ["sweep", str(spec)]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HF_HUB_OFFLINE="1", MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ftray sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
    results = []
    for result_file in (work / "ray_results").glob("*/*/result.json"):
        for line in result_file.read_text().splitlines():
            if line.strip():
                results.append(json.loads(line))
    return sorted(results, key=lambda r: r["timestamp"])


def best_completed(results: list[dict], epochs: int, objective: str) -> float:
    finals = [r[objective] for r in results if r["epoch"] == epochs]
    return max(finals) if finals else float("nan")


def epochs_until(results: list[dict], epochs: int, objective: str, target: float) -> float:
    """Epochs trained (all trials, in time order) until a completed trial reached `target`."""
    for count, result in enumerate(results, start=1):
        if result["epoch"] == epochs and result[objective] >= target:
            return float(count)
    return math.inf


def measure(
    spec: Path,
    seed: int,
    trials: int,
    epochs: int,
    scheduler: str,
    extra: dict[str, Any],
    variant: tuple[str, bool] = ("asha", False),
) -> tuple[list[dict], float]:
    """One sweep in a fresh folder: its per-epoch results and its wall seconds."""
    with tempfile.TemporaryDirectory(prefix="ftray-bench-asha-") as tmp:
        started = time.monotonic()
        results = sweep(spec, Path(tmp), seed, trials, epochs, scheduler, extra, variant)
        return results, time.monotonic() - started


def stopped_at_zero(results: list[dict], epochs: int, objective: str) -> int:
    """Trials stopped before their last epoch while their objective read 0."""
    last: dict[str, dict] = {}
    for result in results:
        if result["epoch"] >= last.get(result["trial_id"], {}).get("epoch", 0):
            last[result["trial_id"]] = result
    return sum(r["epoch"] < epochs and r[objective] == 0 for r in last.values())


def compare(fifo: list[dict], asha: list[dict], epochs: int, objective: str) -> dict[str, Any]:
    """One seed's ASHA run against its FIFO run."""
    full_best = best_completed(fifo, epochs, objective)
    target = full_best - WITHIN
    spent = {
        name: epochs_until(r, epochs, objective, target)
        for name, r in (("fifo", fifo), ("asha", asha))
    }
    return {
        "full_best": full_best,
        "asha_best": best_completed(asha, epochs, objective),
        "fifo_epochs_total": len(fifo),
        "asha_epochs_total": len(asha),
        "fifo_epochs": spent["fifo"],
        "asha_epochs": spent["asha"],
        "ratio": spent["fifo"] / spent["asha"] if spent["asha"] < math.inf else 0.0,
        "stopped_at_zero": stopped_at_zero(asha, epochs, objective),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "search_spaces" / "trigger_tiny.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--prune", nargs="+", default=["default"], metavar="CANDIDATE")
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="write each sweep's per-epoch results here"
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a spec override for every sweep, FIFO's included (e.g. another search.space)",
    )
    args = parser.parse_args()
    every: dict[str, str] = {}  # --set overrides, for every sweep
    for item in args.sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item}: overrides are written KEY=VALUE")
        every[key] = value
    args.spec = args.spec.resolve()  # the sweeps run in folders of their own

    from ftray.config import load_spec

    search = load_spec(args.spec).search
    assert search is not None and search.primary.mode == "max", "a spec maximising one objective"
    objective = search.primary.metric
    # Each candidate's `--set` overrides, and its (scheduler, partial) variant.
    candidates = {
        c: (prune_overrides(c, objective, search.primary.mode), parse_candidate(c)[:2])
        for c in args.prune
    }
    rows: dict[str, list[dict[str, Any]]] = {c: [] for c in candidates}
    walls: dict[str, list[float]] = {"fifo": [], **{c: [] for c in candidates}}

    def keep(name: str, seed: int, results: list[dict]) -> None:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            (args.keep / f"{args.spec.stem}-{name}-seed{seed}.json").write_text(json.dumps(results))

    for seed in args.seeds:
        fifo, wall = measure(args.spec, seed, args.trials, args.epochs, "fifo", every)
        walls["fifo"].append(wall)
        keep("fifo", seed, fifo)
        for candidate, (extra, variant) in candidates.items():
            asha, wall = measure(
                args.spec, seed, args.trials, args.epochs, "asha", {**every, **extra}, variant
            )
            walls[candidate].append(wall)
            name = candidate.replace(":", "_").replace("/", "-").replace(",", "+")
            keep(name.replace("=", "-"), seed, asha)
            rows[candidate].append({"seed": seed, **compare(fifo, asha, args.epochs, objective)})
            print(f"seed {seed} {candidate}: {json.dumps(rows[candidate][-1])}", flush=True)

    print(
        f"{args.spec.name}, {args.trials} trials x {args.epochs} epochs, 2 at a time, objective "
        f"{objective}; target = the FIFO run's best - {WITHIN}; median FIFO wall "
        f"{statistics.median(walls['fifo']):.0f} s"
    )
    print(
        "candidate             best gap  epochs/FIFO's  savings  at 0  wall  "
        "(per seed: best FIFO/ASHA, epochs to target FIFO/ASHA, all FIFO/ASHA)"
    )
    for candidate, per_seed in rows.items():
        gap = statistics.median(r["full_best"] - r["asha_best"] for r in per_seed)
        share = statistics.median(r["asha_epochs_total"] / r["fifo_epochs_total"] for r in per_seed)
        savings = statistics.median(r["ratio"] for r in per_seed)
        at_zero = statistics.median(r["stopped_at_zero"] for r in per_seed)
        seeds = "; ".join(
            f"{r['full_best']:.2f}/{r['asha_best']:.2f} {r['fifo_epochs']:.0f}/{r['asha_epochs']:.0f} "
            f"{r['fifo_epochs_total']}/{r['asha_epochs_total']}"
            for r in per_seed
        )
        print(
            f"{candidate:<20}  {gap:<8.3f}  {share:<13.2f}  {savings:<7.2f}  {at_zero:<4g}  "
            f"{statistics.median(walls[candidate]):<4.0f}  {seeds}"
        )
    first = rows[args.prune[0]]
    print(f"asha_savings: {statistics.median(r['ratio'] for r in first):.2f}")


if __name__ == "__main__":
    main()
