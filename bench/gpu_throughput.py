"""GPU training throughput: tokens/s of the `unsloth` backend against the `peft` backend on
the same GPU spec (one trial's trainer, the same steps). Runs only where CUDA and the base
model are present; elsewhere it says so and prints no figure.

    .venv/bin/python bench/gpu_throughput.py [--spec search_spaces/trigger_llama_gpu.yaml]

Prints `gpu_throughput: <unsloth tokens/s / peft tokens/s>` last. Not yet run on a GPU:
see docs/performance.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tokens_per_second(spec_path: str, backend: str, steps: int) -> float:
    """Train `steps` optimizer steps of the spec's trainer with `backend`; tokens/s."""
    from ftray.config import load_spec
    from ftray.models.backend import select_backend
    from ftray.tasks import load_task
    from ftray.training.trial import build_trainer, prepare_base

    spec = load_spec(spec_path, [f"model.backend={backend}"])
    task = load_task(spec)
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(
            spec, task, prepare_base(spec, task), Path(out), select_backend(backend)
        )
        trainer.args.max_steps = steps
        trainer.args.eval_strategy = "no"
        lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
        tokens_per_row = sum(lengths) / len(lengths)
        per_step = spec.train.batch_size * spec.train.gradient_accumulation_steps
        started = time.monotonic()
        trainer.train()
        seconds = time.monotonic() - started
    return steps * per_step * tokens_per_row / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "trigger_llama_gpu.yaml"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:  # one backend per process: Unsloth patches transformers on import
        print(tokens_per_second(args.spec, args.backend, args.steps))
        return

    import torch

    if not torch.cuda.is_available():
        print("gpu_throughput: skipped, no CUDA device here (the figure needs a GPU)")
        return
    rates = {}
    for backend in ("peft", "unsloth"):
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--spec",
                args.spec,
                "--steps",
                str(args.steps),
                "--backend",
                backend,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rates[backend] = float(done.stdout.strip().splitlines()[-1])
        print(f"{backend}: {rates[backend]:.0f} tokens/s ({args.steps} steps)")
    print(f"gpu_throughput: {rates['unsloth'] / rates['peft']:.2f}")


if __name__ == "__main__":
    main()
