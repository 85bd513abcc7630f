"""Early-stopping savings: ftray's default search (TPE + ASHA with the default `search.prune`)
against random search + FIFO, the same trial budget, on a sample spec (default the trigger
task; `--spec search_spaces/pipeline_tiny.yaml` the pipeline) with the `tiny` model, for
several seeds (`train.seed` seeds the sampler and the training).

Figure per seed: the training epochs each sweep spent until its best completed trial's
objective came within 0.02 of the best the full-budget run (random + FIFO) found, counted
from Tune's per-epoch results in time order (epochs of trials still running count too).

    .venv/bin/python bench/asha_savings.py [--seeds 0 1 2 --trials 8 --epochs 4]

Prints `asha_savings: <epochs(random+FIFO) / epochs(TPE+ASHA)>` last (median over seeds).
With at most 10 trials Optuna's TPE samples its first 10 at random, so both sweeps see the
same configurations and the figure is ASHA's alone.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WITHIN = 0.02


def sweep(
    spec: Path, work: Path, seed: int, trials: int, epochs: int, scheduler: str
) -> list[dict]:
    """Run one sweep; every epoch's Tune result, each with its trial id, in time order."""
    overrides = {
        "search.num_trials": trials,
        "search.scheduler": scheduler,
        "train.epochs": epochs,
        "train.seed": seed,
        "storage.tune_path": str(work / "ray_results"),
    }
    command = [sys.executable, "-m", "ftray", "sweep", str(spec)]
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


def one_seed(spec: Path, objective: str, seed: int, trials: int, epochs: int) -> dict[str, Any]:
    runs = {}
    for name, scheduler in (("fifo", "fifo"), ("asha", "asha")):
        with tempfile.TemporaryDirectory(prefix="ftray-bench-asha-") as tmp:
            runs[name] = sweep(spec, Path(tmp), seed, trials, epochs, scheduler)
    full_best = best_completed(runs["fifo"], epochs, objective)
    target = full_best - WITHIN
    spent = {
        name: epochs_until(results, epochs, objective, target) for name, results in runs.items()
    }
    return {
        "seed": seed,
        "full_best": full_best,
        "asha_best": best_completed(runs["asha"], epochs, objective),
        "fifo_epochs_total": len(runs["fifo"]),
        "asha_epochs_total": len(runs["asha"]),
        "fifo_epochs": spent["fifo"],
        "asha_epochs": spent["asha"],
        "ratio": spent["fifo"] / spent["asha"] if spent["asha"] < math.inf else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "search_spaces" / "trigger_tiny.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    from ftray.config import load_spec

    search = load_spec(args.spec).search
    assert search is not None and search.primary.mode == "max", "a spec maximising one objective"
    objective = search.primary.metric
    rows = [one_seed(args.spec, objective, seed, args.trials, args.epochs) for seed in args.seeds]
    print(
        f"{args.spec.name}, {args.trials} trials x {args.epochs} epochs, 2 at a time, objective "
        f"{objective}; target = the FIFO run's best - {WITHIN}"
    )
    print("seed  best FIFO  best ASHA  epochs FIFO (to target/all)  epochs ASHA (to target/all)")
    for r in rows:
        print(
            f"{r['seed']:<4}  {r['full_best']:<9.2f}  {r['asha_best']:<9.2f}  "
            f"{r['fifo_epochs']:.0f}/{r['fifo_epochs_total']:<26}  "
            f"{r['asha_epochs']:.0f}/{r['asha_epochs_total']}"
        )
    best_gap = statistics.median(r["full_best"] - r["asha_best"] for r in rows)
    share = statistics.median(r["asha_epochs_total"] / r["fifo_epochs_total"] for r in rows)
    print(f"median best(FIFO) - best(ASHA): {best_gap:.3f}; ASHA's epochs / FIFO's: {share:.2f}")
    print(f"asha_savings: {statistics.median(r['ratio'] for r in rows):.2f}")


if __name__ == "__main__":
    main()
