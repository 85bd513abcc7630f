"""How far off `ftray plan` is: a sweep of simulated trials, the plan for a sweep three times
its size made from it, then that sweep, its wall time (the `time/*` phases it recorded)
against the plan's; repeated, each in a store of its own.

Simulated trials (`model.backend: simulated`, the trigger spec's recorded curves) make the
trials' time a controlled sleep, so what is measured is the plan's model: seconds per epoch,
ASHA's share of epochs, the trials phase's tail, the fixed phases.

    python bench/plan_accuracy.py [--trials 12] [--factor 3] [--epoch-seconds 1] [--repeat 3]

prints one line per repeat and last `plan_error: <median |plan - actual| / actual>`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "search_spaces" / "trigger_tiny.yaml"
CURVES = ROOT / "bench" / "curves" / "trigger_tiny.json"
WALL = re.compile(r"wall time (?:(\d+) h )?(?:(\d+) min )?(\d+) s")


def ftray(*args: str, store: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ftray", "-q", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": store},
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ftray {args[0]} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def planned_seconds(text: str) -> float:
    found = WALL.search(text)
    if found is None:
        raise SystemExit(f"no wall time in the plan:\n{text}")
    hours, minutes, seconds = (int(g or 0) for g in found.groups())
    return hours * 3600 + minutes * 60 + seconds


def recorded_seconds(store: str) -> float:
    from mlflow import MlflowClient

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("trigger-tiny")
    parents = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`ftray.role` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return sum(v for k, v in parents[0].data.metrics.items() if k.startswith("time/"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12, help="trials of the first sweep")
    parser.add_argument("--factor", type=int, default=3, help="the planned sweep's size / first's")
    parser.add_argument("--epoch-seconds", type=float, default=1.0)
    parser.add_argument("--concurrent", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    errors = []
    for repeat in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="ftray-plan-bench-") as folder:
            store = f"sqlite:///{folder}/mlflow.db"
            sets = [
                *("--set", "model.backend=simulated"),
                *(
                    "--set",
                    f"model.simulation={{curves: {CURVES}, epoch_seconds: {args.epoch_seconds}}}",
                ),
                *("--set", f"search.max_concurrent_trials={args.concurrent}"),
                *("--set", "resources_per_trial.cpu=0.25"),
                *("--set", f"storage.tune_path={folder}/ray_results"),
            ]
            big = args.trials * args.factor
            ftray(
                "sweep", str(SPEC), *sets, "--set", f"search.num_trials={args.trials}", store=store
            )
            plan = ftray("plan", str(SPEC), *sets, "--set", f"search.num_trials={big}", store=store)
            ftray("sweep", str(SPEC), *sets, "--set", f"search.num_trials={big}", store=store)
            planned, actual = planned_seconds(plan), recorded_seconds(store)
            errors.append(abs(planned - actual) / actual)
            print(
                json.dumps(
                    {
                        "repeat": repeat,
                        "trials": args.trials,
                        "planned_for": big,
                        "planned_s": planned,
                        "actual_s": round(actual, 1),
                        "error": round(errors[-1], 3),
                    }
                ),
                flush=True,
            )
    print(f"plan_error: {statistics.median(errors):.3f}")


if __name__ == "__main__":
    main()
