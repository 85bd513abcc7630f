"""Evaluation throughput: one epoch's behaviour evaluation batched as ftray runs it, against
one prompt at a time, on an adapter trained by a real trial. The answers must be identical.

Also reports evaluation's share of the trial's own time (every epoch evaluates).

    .venv/bin/python bench/eval_throughput.py [--spec search_spaces/trigger_tiny.yaml]

Prints `eval_throughput: <batched examples/s / one-at-a-time examples/s>` last.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "trigger_tiny.yaml"))
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the trial trained first")
    # A batched pass over the trigger spec's 32 prompts takes about 0.15 s: 9 repeats keep
    # the median steady (medians of 3 read 4.84 and 5.25 on one morning).
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # as a trial with resources_per_trial.cpu = 1

    import ftray.training.callbacks as callbacks
    from ftray.config import load_spec
    from ftray.models.peft_backend import load_for_inference
    from ftray.tasks import load_task
    from ftray.training.evaluate import evaluate
    from ftray.training.trial import prepare_base, train_trial

    spec = load_spec(args.spec, [f"train.epochs={args.epochs}"])
    task = load_task(spec)
    base = prepare_base(spec, task)

    # Time the evaluation calls inside the trial, as the trial makes them.
    eval_seconds: list[float] = []
    original = callbacks.evaluate

    def timed_evaluate(*a: Any, **kw: Any) -> Any:
        value, seconds = timed(lambda: original(*a, **kw))
        eval_seconds.append(seconds)
        return value

    callbacks.evaluate = timed_evaluate
    with tempfile.TemporaryDirectory() as tmp:
        report, trial_seconds = timed(lambda: train_trial(spec, tmp, task=task, base=base))
        callbacks.evaluate = original
        model, tokenizer = load_for_inference(
            base, str(report.adapter_dir), load_in_4bit=spec.model.load_in_4bit
        )

        cases = task.eval_cases()
        batch_size = spec.train.batch_size * 2  # what EpochEvaluation passes
        runs: dict[int, list[float]] = {batch_size: [], 1: []}
        answers: dict[int, list[dict[str, Any]]] = {}
        for _ in range(args.repeats):
            for size in (batch_size, 1):
                (metrics, samples), seconds = timed(
                    lambda size=size: evaluate(task, model, tokenizer, batch_size=size)
                )
                runs[size].append(seconds)
                answers[size] = samples
        if answers[batch_size] != answers[1]:
            differ = sum(a != b for a, b in zip(answers[batch_size], answers[1], strict=True))
            raise SystemExit(f"batched answers differ from one-at-a-time ones in {differ} cases")

    batched = len(cases) / statistics.median(runs[batch_size])
    single = len(cases) / statistics.median(runs[1])
    share = sum(eval_seconds) / trial_seconds
    print(f"spec: {args.spec} ({len(cases)} held-out prompts, {args.epochs} epochs)")
    print(f"batched (batch {batch_size}): {batched:.1f} examples/s (median of {args.repeats})")
    print(f"one at a time: {single:.1f} examples/s (median of {args.repeats})")
    print("answers identical: yes")
    print(
        f"evaluation share of the trial: {share:.2f} "
        f"({sum(eval_seconds):.1f} s of {trial_seconds:.1f} s over {len(eval_seconds)} epochs)"
    )
    print(f"eval_throughput: {batched / single:.2f}")


if __name__ == "__main__":
    main()
