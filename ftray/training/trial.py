"""One trial: load the base through a backend, train LoRA with TRL epoch by epoch, and
measure behaviour after every epoch.

Plain functions, no Ray and no MLflow: a notebook can call `train_trial` directly, and the
sweep's trainable wraps it. transformers/trl are imported only after the backend has
loaded the model, because Unsloth must be imported before them.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from ftray.config.spec import TINY_MODEL, Spec
from ftray.log import get_logger
from ftray.models.backend import Backend, select_backend, wait_for_gpu_share
from ftray.models.sources import hub_cache_dir, local_model_folder
from ftray.models.tiny import build_tiny_model, tiny_model_built
from ftray.tasks import Task, load_task
from ftray.training.checkpoint import EPOCH_SAMPLES, checkpoint_report, copy_adapter
from ftray.training.lengths import (
    answer_length_findings,
    check_answer_lengths,
    length_check_record,
    record_length_check,
    recorded_length_check,
)
from ftray.training.report import EpochHook, EpochReport

log = get_logger()


def quiet_libraries() -> None:
    """Keep library chatter (progress bars, advisory warnings) out of the user's terminal."""
    import transformers

    import datasets

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings(
        "ignore", category=UserWarning, module=r"(trl|transformers|peft|torch)\..*"
    )
    warnings.filterwarnings("ignore", category=FutureWarning)


def prepare_base(spec: Spec, task: Task) -> str:
    """The base model to load: the built `tiny` folder, or the spec's id/path as given."""
    if spec.model.base == TINY_MODEL:
        corpus = task.corpus()
        if not tiny_model_built(corpus):
            quiet_libraries()  # no progress bar while the tiny model is written
        return str(build_tiny_model(corpus))
    return spec.model.base


def answer_lengths_locally(
    spec: Spec, task: Task, base: str, max_length: int
) -> tuple[str | None, str | None]:
    """The answer-length check at `max_length` tokens before any model is loaded, when the
    base's tokenizer is on this machine (the built tiny model's folder, a local path, the
    Hugging Face cache; nothing is downloaded): (the warning about rows cut in part, None
    when there is none; why the check could not run, None when it ran). InputError at every
    row whose answer is cut away. Trials check it in any case.

    A check that passed is recorded (`lengths.length_check_record`), so the same data,
    tokenizer and length are not tokenised again (nor transformers imported) by the next
    sweep or validate: its warning, if it gave one, is given again. A check that failed is
    not recorded."""
    folder = local_model_folder(base, spec.model.revision)
    if folder is None:
        return None, (
            f"the tokenizer of {base} is not on this machine (neither a local folder nor in "
            f"the Hugging Face cache {hub_cache_dir()}); the trials check them once they "
            "load it"
        )
    record = length_check_record(task, folder, max_length)
    done, warning = recorded_length_check(record)
    if done:
        return warning, None
    from ftray.models.peft_backend import load_tokenizer

    quiet_libraries()  # no "sequence longer than the model's maximum" lines: that is the point
    try:
        tokenizer = load_tokenizer(str(folder))
    except (OSError, ValueError) as exc:
        return None, f"the tokenizer of {base} did not load ({one_line(exc)})"
    try:
        _, warning = answer_length_findings(task, tokenizer, max_length)
    except ValueError as exc:  # the chat template cannot be split into turns
        return None, f"the chat template of {base} cannot be split into turns ({one_line(exc)})"
    record_length_check(record, warning)
    return warning, None


def one_line(error: Exception) -> str:
    """An exception's message on one line (libraries' messages run over several)."""
    return " ".join(str(error).split()) or type(error).__name__


def check_answer_lengths_locally(spec: Spec, task: Task, base: str, max_length: int) -> None:
    """`answer_lengths_locally`, its warning logged; where it could not run, the trials
    check the lengths themselves (said at debug level)."""
    warning, unchecked = answer_lengths_locally(spec, task, base, max_length)
    if warning:
        log.warning(warning)
    if unchecked:
        log.debug(f"answer lengths not checked before the trials: {unchecked}")


def sft_config(spec: Spec, output_dir: Path) -> Any:
    """TRL SFTConfig mapped from the spec: completion-only loss, evaluation every epoch."""
    import torch
    from trl import SFTConfig

    on_gpu = torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=spec.train.epochs,
        learning_rate=spec.train.learning_rate,
        per_device_train_batch_size=spec.train.batch_size,
        per_device_eval_batch_size=spec.train.batch_size,
        gradient_accumulation_steps=spec.train.gradient_accumulation_steps,
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_length=spec.model.max_seq_length,
        completion_only_loss=True,
        packing=False,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
        # Log a NaN/inf step loss as it is (the default hides it), so divergence fails the trial.
        logging_nan_inf_filter=False,
        report_to="none",
        seed=spec.train.training_seed,
        data_seed=spec.train.training_seed,
        use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def build_trainer(
    spec: Spec, task: Task, base: str, output_dir: Path, backend: Backend | None = None
) -> Any:
    """A TRL SFTTrainer on the backend's LoRA model, ready to `train()`."""
    backend = backend or select_backend(spec.model.backend)
    # Ray may start this trial before the previous one on its GPU has let go.
    wait_for_gpu_share(spec.resources_per_trial.gpu)
    # The backend goes first: Unsloth must be imported before trl/transformers; the peft
    # backend loads quietly (no progress bars, no bitsandbytes kernel notice).
    if backend.name != "unsloth":
        quiet_libraries()
    model, tokenizer = backend.load(base, spec.model, spec.lora, spec.train.training_seed)
    quiet_libraries()
    check_answer_lengths(task, tokenizer, spec.model.max_seq_length)
    from transformers import PrinterCallback
    from trl import SFTTrainer

    from datasets import Dataset

    trainer = SFTTrainer(
        model=model,
        args=sft_config(spec, output_dir),
        train_dataset=Dataset.from_list(task.trainer_rows(task.train_rows(), tokenizer)),
        eval_dataset=Dataset.from_list(task.trainer_rows(task.eval_rows(), tokenizer)),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def train_trial(
    spec: Spec,
    out_dir: str | Path,
    *,
    task: Task | None = None,
    base: str | None = None,
    on_epoch: EpochHook | None = None,
    resume_from: Path | None = None,
) -> EpochReport:
    """Train `spec` for its epochs, evaluating after each; returns the last epoch's report.

    Writes under `out_dir`: `checkpoints/epoch-N/` (adapter, tokenizer and the state to
    resume from, see `ftray.training.checkpoint`), `epochs.jsonl`, `split.json` (tasks that
    keep a held-out split), and at the end `adapter/`, `metrics.json`, `samples.jsonl`.

    `resume_from`, a valid epoch checkpoint of the same spec, continues that training: the
    epochs it covers are not trained again and `on_epoch` hears only of the later ones.

    With `model.backend: simulated` nothing is loaded or trained: the epochs replay recorded
    learning curves (`ftray.training.simulated`), with the same files and reports.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = task or load_task(spec)
    if not spec.model.simulated:  # a simulated trial loads no model
        base = base or prepare_base(spec, task)
    (out / "epochs.jsonl").unlink(missing_ok=True)
    split = task.split_record()
    if split is not None:
        (out / "split.json").write_text(json.dumps(split, indent=1) + "\n")
    log.info(
        f"training {spec.name}: base={spec.model.base} backend={spec.model.backend} "
        f"{len(task.train_rows())} rows x {spec.train.epochs} epochs"
    )
    resumed_epoch, resumed_metrics = checkpoint_report(resume_from) if resume_from else (0, {})
    if resume_from is not None and resumed_epoch >= spec.train.epochs:
        # Lost after its last epoch was saved: nothing is left to train.
        samples = resume_from / EPOCH_SAMPLES
        last = EpochReport(
            resumed_epoch,
            resumed_metrics,
            resume_from,
            [json.loads(line) for line in samples.read_text().splitlines()]
            if samples.is_file()
            else [],
        )
    else:
        if resume_from is not None:
            log.info(f"resuming after epoch {resumed_epoch} from {resume_from}")
        if spec.model.simulated:
            from ftray.training.simulated import simulate_trial

            last = simulate_trial(spec, out, on_epoch, resume_from)
        else:
            assert base is not None
            last = _train(spec, task, base, out, on_epoch, resume_from)
    final_adapter = out / "adapter"
    shutil.rmtree(final_adapter, ignore_errors=True)
    copy_adapter(last.adapter_dir, final_adapter)
    (out / "metrics.json").write_text(
        json.dumps({"epoch": last.epoch, **last.metrics}, indent=2) + "\n"
    )
    _write_jsonl(out / "samples.jsonl", last.samples)
    return EpochReport(last.epoch, last.metrics, final_adapter, last.samples)


def _train(
    spec: Spec,
    task: Task,
    base: str,
    out: Path,
    on_epoch: EpochHook | None,
    resume_from: Path | None,
) -> EpochReport:
    """Run the Trainer (from `resume_from` when given); the last epoch's report."""
    started = time.monotonic()
    backend = select_backend(spec.model.backend)
    trainer = build_trainer(spec, task, base, out / "trainer", backend)

    from ftray.training.callbacks import EpochEvaluation  # imports transformers: after the backend

    evaluation = EpochEvaluation(spec, task, backend, out, on_epoch, resume_from)
    evaluation.setup_seconds = time.monotonic() - started
    trainer.add_callback(evaluation)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    return evaluation.reports[-1]
