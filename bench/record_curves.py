"""Record learning curves from real trials, for simulated sweeps (`model.backend: simulated`).

Trains real trials of a spec (the offline `tiny` model on CPU) at configurations drawn at
random from the spec's search space, and writes every epoch's metrics of every trial to a
curves file that `model.simulation.curves` names. The first `--repeat` configurations are
trained again with `train.seed` 1 to `--seeds` - 1, which also draws another held-out split
(for the trigger and pipeline tasks): the spread between seeds is the noise a simulated
trial adds (see `ftray.training.simulated`).

    .venv/bin/python bench/record_curves.py --spec search_spaces/trigger_tiny.yaml \\
        --configs 40 --repeat 10 [--epochs 8 --jobs 2 --out bench/curves/trigger_tiny.json]

Prints one line per trial as it ends, and last `record_curves: <trials recorded>`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import date
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def draw(space: dict[str, dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    """One configuration drawn at random from a spec's search space (as written in YAML)."""
    config: dict[str, Any] = {}
    for dim, dist in space.items():
        ((kind, bounds),) = dist.items()
        if kind == "choice":
            config[dim] = rng.choice(list(bounds))
        elif kind == "loguniform":
            config[dim] = math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1])))
        elif kind == "int":
            config[dim] = rng.randint(int(bounds[0]), int(bounds[1]))
        else:
            config[dim] = rng.uniform(float(bounds[0]), float(bounds[1]))
    return config


def run_trial(spec_path: str, overrides: list[str], config: dict[str, Any], seed: int) -> dict:
    """One real trial in this worker process: every epoch's metrics and seconds."""
    from ftray.config import load_spec
    from ftray.training.trial import train_trial

    spec = load_spec(spec_path, overrides).with_values({**config, "train.seed": seed})
    epochs: list[dict[str, float]] = []
    seconds: list[dict[str, float]] = []

    def keep(report: Any) -> None:
        epochs.append({k: float(v) for k, v in report.metrics.items()})
        seconds.append(dict(report.seconds))

    with tempfile.TemporaryDirectory(prefix="ftray-curves-") as out:
        train_trial(spec, out, on_epoch=keep)
    return {"config": config, "seed": seed, "epochs": epochs, "seconds": seconds}


def one_thread() -> None:
    """Each worker trains on one torch thread: the workers share the cores."""
    os.environ["OMP_NUM_THREADS"] = "1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "search_spaces" / "trigger_tiny.yaml")
    parser.add_argument("--configs", type=int, default=40, help="configurations drawn")
    parser.add_argument("--repeat", type=int, default=10, help="configurations trained again")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of the repeated ones")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default: the spec's)")
    parser.add_argument("--jobs", type=int, default=2, help="trials at a time")
    parser.add_argument("--draw-seed", type=int, default=0, help="seeds the configurations")
    parser.add_argument("--out", type=Path, help="default: bench/curves/<spec name>.json")
    args = parser.parse_args()

    from ftray.config import load_spec

    overrides = [f"train.epochs={args.epochs}"] if args.epochs else []
    spec = load_spec(args.spec, overrides)
    if spec.search is None:
        raise SystemExit(f"{args.spec} has no search: section to draw configurations from")
    space = {dim: {dist.kind: list(dist.values())} for dim, dist in spec.search.space.items()}
    rng = random.Random(args.draw_seed)
    configs = [draw(space, rng) for _ in range(args.configs)]
    jobs = [(config, spec.train.seed) for config in configs]
    jobs += [
        (config, spec.train.seed + k)
        for config in configs[: args.repeat]
        for k in range(1, args.seeds)
    ]
    out = args.out or ROOT / "bench" / "curves" / f"{args.spec.stem}.json"
    started = time.monotonic()
    trials = []
    with ProcessPoolExecutor(
        args.jobs, mp_context=get_context("spawn"), initializer=one_thread
    ) as pool:
        pending = [
            pool.submit(run_trial, str(args.spec.resolve()), overrides, config, seed)
            for config, seed in jobs
        ]
        for future in as_completed(pending):
            trial = future.result()
            trials.append(trial)
            objective = spec.search.primary.metric
            print(
                f"[{len(trials)}/{len(jobs)}, {time.monotonic() - started:.0f} s] seed "
                f"{trial['seed']} {json.dumps(trial['config'])}: {objective} per epoch "
                + " ".join(f"{e[objective]:.2f}" for e in trial["epochs"]),
                flush=True,
            )
    trials.sort(key=lambda t: (configs.index(t["config"]), t["seed"]))
    command = " ".join(
        shlex.quote(a) for a in [".venv/bin/python", "bench/record_curves.py", *sys.argv[1:]]
    )
    record = {
        "spec": str(args.spec.resolve().relative_to(ROOT))
        if args.spec.resolve().is_relative_to(ROOT)
        else str(args.spec),
        "command": command,
        "recorded": date.today().isoformat(),
        "epochs": spec.train.epochs,
        "space": space,
        "fixed": {"train.seed": spec.train.seed},
        "trials": trials,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out} ({len(trials)} trials, {time.monotonic() - started:.0f} s)")
    print(f"record_curves: {len(trials)}")


if __name__ == "__main__":
    main()
