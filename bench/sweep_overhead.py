"""Sweep overhead: how much of a sweep's wall time goes into training and evaluation.

Runs `ftray sweep` on the trigger task with the `tiny` model, N trials of one fixed
configuration, FIFO (no pruning), `--slots` at a time, and reads where the time went: the
sweep's phases (the parent run's `time/*` metrics) and each trial's own seconds (the
`seconds` each epoch's result carries in Tune's result files).

    .venv/bin/python bench/sweep_overhead.py [--trials 8 --epochs 6 --slots 2 --repeats 3]

Prints `sweep_overhead: <wall / (sum of the trials' train+evaluate seconds / slots)>` last
(median over repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "search_spaces" / "trigger_tiny.yaml"
FIXED_SPACE = "{lora.r: {choice: [8]}}"


def run_sweep(work: Path, trials: int, epochs: int, slots: int) -> dict[str, Any]:
    """One sweep in a fresh process; its wall time, phases and per-trial seconds."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    overrides = {
        "search.num_trials": trials,
        "search.max_concurrent_trials": slots,
        "search.scheduler": "fifo",
        "search.space": FIXED_SPACE,
        "train.epochs": epochs,
        "storage.tune_path": str(work / "ray_results"),
        "tracking.registered_model": "bench-overhead",
    }
    command = [sys.executable, "-m", "ftray", "sweep", str(SPEC)]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"ftray sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("trigger-tiny")
    parent = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`ftray.role` = 'sweep'", max_results=1
    )[0]
    phases = {
        key.split("/", 1)[1]: value
        for key, value in parent.data.metrics.items()
        if key.startswith("time/")
    }
    per_trial = []
    for result_file in sorted((work / "ray_results").glob("*/*/result.json")):
        results = [json.loads(line) for line in result_file.read_text().splitlines() if line]
        seconds = [result["seconds"] for result in results]
        per_trial.append(
            {
                "setup": seconds[0].get("setup", 0.0),
                "train": sum(s["train"] for s in seconds),
                "evaluate": sum(s["evaluate"] for s in seconds),
                "checkpoint": sum(s["checkpoint"] for s in seconds),
                # Tune's own clock: from the trial function's start to its last report.
                "wall": results[-1]["time_total_s"],
                "started": results[0]["timestamp"] - results[0]["time_total_s"],
                "pid": results[0]["pid"],
            }
        )
    if len(per_trial) != trials:
        raise SystemExit(f"found {len(per_trial)} trials' records, expected {trials}")
    return {"wall": wall, "phases": phases, "trials": per_trial}


def summarise(run: dict[str, Any], slots: int) -> dict[str, float]:
    trials = sorted(run["trials"], key=lambda t: t["started"])
    work = sum(t["train"] + t["evaluate"] for t in trials)
    # A trial is warm when its worker process ran a trial before (Tune reuses the actors of
    # a function trainable): it pays no process start and no imports.
    seen: set[int] = set()
    warm = []
    for trial in trials:
        if trial["pid"] in seen:
            warm.append(trial)
        seen.add(trial["pid"])
    cold = [t for t in trials if t not in warm]
    overhead = [t["wall"] - t["train"] - t["evaluate"] for t in trials]
    warm_overhead = [t["wall"] - t["train"] - t["evaluate"] for t in warm]
    phases = run["phases"]
    fixed = run["wall"] - phases.get("trials", run["wall"])
    return {
        "wall": run["wall"],
        "ratio": run["wall"] / (work / slots),
        "train_evaluate": work,
        "fixed": fixed,
        "trial_overhead_median": statistics.median(overhead),
        "warm_trial_overhead_median": statistics.median(warm_overhead)
        if warm_overhead
        else float("nan"),
        "workers": len(seen),
        "setup_cold": statistics.median(t["setup"] for t in cold),
        "setup_warm": statistics.median(t["setup"] for t in warm) if warm else float("nan"),
        "train": sum(t["train"] for t in trials),
        "evaluate": sum(t["evaluate"] for t in trials),
        "checkpoint": sum(t["checkpoint"] for t in trials),
        **{f"phase_{k}": v for k, v in phases.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--slots", type=int, default=2, help="trials at a time")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="ftray-bench-overhead-") as tmp:
            runs.append(
                summarise(run_sweep(Path(tmp), args.trials, args.epochs, args.slots), args.slots)
            )

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(
        f"{args.trials} trials x {args.epochs} epochs, {args.slots} at a time, FIFO, one fixed "
        f"configuration; medians of {args.repeats} sweep(s)"
    )
    print(f"sweep wall: {med('wall'):.1f} s")
    print(
        f"  before trials: prepare data and base {med('phase_prepare'):.1f} s, Ray start "
        f"{med('phase_ray_start'):.1f} s, tracking setup {med('phase_tracking_setup'):.1f} s"
    )
    print(f"  trials (Tune): {med('phase_trials'):.1f} s")
    print(
        f"  after trials: registration {med('phase_registration'):.1f} s, plots "
        f"{med('phase_plots'):.1f} s; fixed per-sweep overhead (wall outside the trials "
        f"phase) {med('fixed'):.1f} s"
    )
    print(
        f"trials' own time, summed: train {med('train'):.1f} s, evaluate {med('evaluate'):.1f} s, "
        f"checkpoints {med('checkpoint'):.1f} s"
    )
    print(
        f"worker processes: {med('workers'):.0f} for {args.trials} trials; "
        f"per-trial start-up (imports, data, model load): first trial of a worker "
        f"{med('setup_cold'):.1f} s, later trials {med('setup_warm'):.1f} s"
    )
    print(
        f"per-trial overhead (trial wall minus train+evaluate), median: all "
        f"{med('trial_overhead_median'):.1f} s, warm workers {med('warm_trial_overhead_median'):.1f} s"
    )
    print(f"sweep_overhead: {med('ratio'):.2f}")


if __name__ == "__main__":
    main()
