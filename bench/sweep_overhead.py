"""Sweep overhead: how much of a sweep's wall time goes into training and evaluation.

Runs `ftray sweep` on the trigger task with the `tiny` model, N trials of one fixed
configuration, FIFO (no pruning), `--slots` at a time, and reads where the time went: the
sweep's phases (the parent run's `time/*` metrics) and each trial's own seconds (the
`seconds` each epoch's result carries in Tune's result files).

    .venv/bin/python bench/sweep_overhead.py [--trials 8 --epochs 6 --slots 2 --repeats 3]

Every repeat's sweep starts with a cold cache: a fresh ftray cache (`FTRAY_CACHE_DIR`)
holding only the built `tiny` base, so its trials quantize the base and its driver checks the
answers' lengths, as a machine's first sweep of a spec does. `--warm` also times a second
sweep per repeat on the cache the first filled (every later sweep), reported separately.

    .venv/bin/python bench/sweep_overhead.py --warm

Prints `sweep_overhead: <wall / (sum of the trials' train+evaluate seconds / slots)>` last
(median over repeats, cold caches); with `--warm`, the warm caches' figures before it.
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
CPU_SAMPLE_S = 0.5


def run_sweep(work: Path, cache: Path, trials: int, epochs: int, slots: int) -> dict[str, Any]:
    """One sweep in a fresh process, with `cache` as ftray's cache; its wall time, phases
    and per-trial seconds."""
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
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "HF_HUB_OFFLINE": "1",
        "FTRAY_CACHE_DIR": str(cache),
    }
    env.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    with (work / "stderr.txt").open("w") as stderr:
        driver = subprocess.Popen(
            command, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
        cpu = cpu_seconds_of(driver)
    wall = time.monotonic() - started
    if driver.returncode != 0:
        err = (work / "stderr.txt").read_text()
        raise SystemExit(f"ftray sweep failed ({driver.returncode}):\n{err[-3000:]}")

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
    trial_pids = {trial["pid"] for trial in per_trial}
    by_kind = {"driver": 0.0, "trial_workers": 0.0, "other_workers": 0.0, "ray": 0.0}
    for (pid, _), (seconds, names) in cpu.items():
        if pid == driver.pid:
            kind = "driver"
        elif pid in trial_pids:
            kind = "trial_workers"
        elif any("default_worker" in name or name.startswith("ray::IDLE") for name in names):
            kind = "other_workers"  # started by Ray, never given a trial
        else:
            kind = "ray"  # GCS, raylet, agents, log monitor, ...
        by_kind[kind] += seconds
    return {"wall": wall, "phases": phases, "trials": per_trial, "cpu": by_kind}


def cpu_seconds_of(
    driver: subprocess.Popen, every: float = CPU_SAMPLE_S
) -> dict[tuple[int, float], tuple[float, set[str]]]:
    """Wait for `driver` to end, sampling the CPU-seconds (user + system) of it and of every
    process under it (Ray's processes and trial workers) every `every` seconds. Per process
    (pid, start time): its last reading, so its final `every` seconds are missed, and every
    command line it showed (Ray retitles its workers: `ray::IDLE`, `ray::ImplicitFunc.train`)."""
    import psutil

    seen: dict[tuple[int, float], tuple[float, set[str]]] = {}
    root = psutil.Process(driver.pid)
    while driver.poll() is None:
        try:
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for process in processes:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    key = (process.pid, process.create_time())
                    name = " ".join(process.cmdline())
            except psutil.Error:
                continue
            seen[key] = (times.user + times.system, seen.get(key, (0.0, set()))[1] | {name})
        time.sleep(every)
    driver.wait()
    return seen


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
        **{f"cpu_{k}": v for k, v in run["cpu"].items()},
        "cpu_per_trial_worker": run["cpu"]["trial_workers"] / len(seen),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--slots", type=int, default=2, help="trials at a time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--warm",
        action="store_true",
        help="also time a second sweep per repeat on the cache its first filled",
    )
    args = parser.parse_args()

    from caches import cold_ftray_cache

    from ftray.config import load_spec
    from ftray.models.tiny import build_tiny_model
    from ftray.tasks import load_task

    tiny = build_tiny_model(load_task(load_spec(SPEC)).corpus())
    runs: list[dict[str, float]] = []
    warm_runs: list[dict[str, float]] = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="ftray-bench-overhead-") as tmp:
            cache = cold_ftray_cache(Path(tmp), tiny)
            for name, kept in [("cold", runs), ("warm", warm_runs)][: 2 if args.warm else 1]:
                work = Path(tmp) / name
                work.mkdir()
                sweep = run_sweep(work, cache, args.trials, args.epochs, args.slots)
                kept.append(summarise(sweep, args.slots))

    if args.warm:
        report(
            warm_runs,
            args,
            "warm caches: each repeat's second sweep, on the cache its first filled",
            "sweep_overhead (warm caches)",
        )
        print()
    report(runs, args, "cold caches: a fresh ftray cache holding only the tiny base")


def report(
    runs: list[dict[str, float]],
    args: argparse.Namespace,
    caches: str,
    figure: str = "sweep_overhead",
) -> None:
    """The medians of `runs`, the figure last."""

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(
        f"{args.trials} trials x {args.epochs} epochs, {args.slots} at a time, FIFO, one fixed "
        f"configuration; medians of {args.repeats} sweep(s); {caches}"
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
        f"CPU-seconds (sampled every {CPU_SAMPLE_S} s): driver {med('cpu_driver'):.1f}, trial "
        f"workers {med('cpu_trial_workers'):.1f} ({med('cpu_per_trial_worker'):.1f} per worker; "
        f"their trials' train+evaluate {med('train_evaluate'):.1f}), other Ray workers "
        f"{med('cpu_other_workers'):.1f}, Ray's own processes {med('cpu_ray'):.1f}"
    )
    print(
        f"per-trial overhead (trial wall minus train+evaluate), median: all "
        f"{med('trial_overhead_median'):.1f} s, warm workers {med('warm_trial_overhead_median'):.1f} s"
    )
    print(f"{figure}: {med('ratio'):.2f}")


if __name__ == "__main__":
    main()
