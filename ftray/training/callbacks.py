"""The Trainer callback that turns every epoch into an `EpochReport`: mean training loss,
the Trainer's eval loss, the task's behaviour metrics on held-out prompts, and the adapter.

Imports transformers: import this module only after the backend has loaded the model
(Unsloth must be imported before transformers).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ftray.config.spec import Spec
from ftray.log import get_logger
from ftray.models.backend import Backend
from ftray.tasks import Task
from ftray.training.checkpoint import load_training_state, save_training_state
from ftray.training.evaluate import evaluate
from ftray.training.report import EpochHook, EpochReport, NonFiniteLoss

log = get_logger()


def diverged(spec: Spec, what: str, value: float, when: str) -> NonFiniteLoss:
    """The error that fails a trial whose loss is NaN or infinite."""
    return NonFiniteLoss(
        f"{what} is {value} {when}: training diverged with "
        f"train.learning_rate={spec.train.learning_rate:g}; lower it or narrow the search space"
    )


class EpochEvaluation(TrainerCallback):
    """After the Trainer's evaluation of each epoch: score behaviour, save the adapter under
    `out/checkpoints/epoch-N/` with the state to resume from, append to `out/epochs.jsonl`,
    and call `on_epoch` (which may stop training by returning True). `reports` holds every
    epoch's report. With `resume_from`, the optimizer, schedule and random generators saved
    there are restored before training continues.

    A NaN or infinite loss (a logged training step or an epoch's eval loss) raises
    `NonFiniteLoss` at once: the epoch is neither scored nor reported.

    Each line of `epochs.jsonl` also says where the epoch's time went (`seconds`: training
    with the Trainer's eval loss, behaviour evaluation, checkpoint; the first line also the
    `setup` before training: imports, data, model load), for `bench/sweep_overhead.py`.
    """

    def __init__(
        self,
        spec: Spec,
        task: Task,
        backend: Backend,
        out: Path,
        on_epoch: EpochHook | None,
        resume_from: Path | None = None,
    ) -> None:
        self.spec = spec
        self.task = task
        self.backend = backend
        self.out = out
        self.on_epoch = on_epoch
        self.reports: list[EpochReport] = []
        self.losses: list[float] = []
        self.resume_from = resume_from
        self.started = time.monotonic()
        self.mark = self.started
        self.setup_seconds: float | None = None

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        *,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kw: Any,
    ) -> None:
        if self.resume_from is not None:
            load_training_state(self.resume_from, optimizer=optimizer, scheduler=lr_scheduler)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if logs and "loss" in logs:
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                raise diverged(self.spec, "train_loss", loss, f"at step {state.global_step}")
            self.losses.append(loss)

    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        metrics: dict[str, float] | None = None,
        *,
        model: Any = None,
        processing_class: Any = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kw: Any,
    ) -> None:
        trained = time.monotonic()
        epoch = round(state.epoch or 0)
        eval_loss = float((metrics or {}).get("eval_loss", float("nan")))
        if "eval_loss" in (metrics or {}) and not math.isfinite(eval_loss):
            raise diverged(self.spec, "eval_loss", eval_loss, f"after epoch {epoch}")
        with self.backend.generation_mode(model):
            behaviour, samples = evaluate(
                self.task, model, processing_class, self.spec.train.batch_size * 2
            )
        evaluated = time.monotonic()
        train_loss = sum(self.losses) / len(self.losses) if self.losses else float("nan")
        self.losses = []
        epoch_metrics = {
            "train_loss": train_loss,
            "eval_loss": eval_loss,
            **behaviour,
        }
        adapter_dir = self.out / "checkpoints" / f"epoch-{epoch}"
        model.save_pretrained(adapter_dir)
        processing_class.save_pretrained(adapter_dir)
        save_training_state(
            adapter_dir,
            state=state,
            optimizer=optimizer,
            scheduler=lr_scheduler,
            epoch=epoch,
            metrics=epoch_metrics,
            samples=samples,
        )
        seconds = {
            "train": round(trained - self.mark, 3),
            "evaluate": round(evaluated - trained, 3),
            "checkpoint": round(time.monotonic() - evaluated, 3),
        }
        if self.setup_seconds is not None and not self.reports:
            seconds["setup"] = round(self.setup_seconds, 3)
        report = EpochReport(epoch, epoch_metrics, adapter_dir, samples, seconds)
        self.reports.append(report)
        with (self.out / "epochs.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"epoch": epoch, **epoch_metrics, "seconds": seconds}) + "\n")
        shown = " ".join(f"{k}={v:.3f}" for k, v in epoch_metrics.items() if "/" not in k)
        elapsed = time.monotonic() - self.started
        log.info(f"epoch {epoch}/{self.spec.train.epochs} ({elapsed:.0f}s) {shown}")
        if self.on_epoch is not None and self.on_epoch(report):
            control.should_training_stop = True
        self.mark = time.monotonic()
