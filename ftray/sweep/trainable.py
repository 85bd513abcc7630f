"""The Ray Tune function trainable: one trial = `train_trial` with the trial's config,
reporting every epoch's metrics and adapter checkpoint to Tune."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ftray.config.spec import TINY_MODEL, Spec
from ftray.log import configure as configure_logging
from ftray.log import get_logger
from ftray.models.backend import (
    ALLOW_CPU_FALLBACK_ENV,
    require_cuda_for_gpu_trial,
    resolve_backend_name,
)
from ftray.models.peft_backend import resolved_revision
from ftray.tasks import load_task
from ftray.training.checkpoint import checkpoint_problem, keep_only_manifest_files
from ftray.training.report import EpochReport
from ftray.training.trial import train_trial

log = get_logger()


def resume_point(checkpoint: Any, into: Path) -> Path | None:
    """The newest usable checkpoint of a retried trial, copied under `into`: Tune's latest,
    else the one before it (Tune keeps two) when the latest is corrupted or incomplete.
    None when neither can be resumed from (the trial starts again at epoch 1)."""
    from pyarrow.fs import FileSelector, FileType
    from ray import tune

    latest = checkpoint.path.rstrip("/")
    siblings = checkpoint.filesystem.get_file_info(FileSelector(os.path.dirname(latest)))
    older = sorted(
        (
            info.path
            for info in siblings
            if info.type == FileType.Directory
            and info.base_name.startswith("checkpoint_")
            and info.path < latest
        ),
        reverse=True,
    )
    for path in [latest, *older]:
        local = into / os.path.basename(path)
        try:
            tune.Checkpoint(path, filesystem=checkpoint.filesystem).to_directory(str(local))
            problem = checkpoint_problem(local)
        except OSError as error:
            problem = f"cannot be read ({error})"
        if problem is None:
            keep_only_manifest_files(local)
            return local
        log.warning(f"checkpoint {path} cannot be resumed from: {problem}")
    log.warning("no usable checkpoint: the trial starts again at epoch 1")
    return None


def make_trainable(
    spec: Spec,
    finished: dict[str, dict[str, Any]] | None = None,
    split: dict[str, Any] | None = None,
) -> Any:
    """A Tune trainable bound to `spec`, asking for `resources_per_trial`.

    `split` is the held-out split the sweep stored (tasks that keep one): every trial
    trains and scores on it, whatever seed its configuration has.

    `finished` maps trial ids that already finished (per MLflow) to their last metrics: when
    Tune's saved state lags behind and restores such a trial, it reports those metrics
    again instead of training a second time.
    """
    from ray import tune

    done_before = dict(finished or {})
    # Read where `ftray sweep` runs, so one setting there reaches every node's trials.
    allow_cpu_fallback = os.environ.get(ALLOW_CPU_FALLBACK_ENV) == "1"

    def run_trial(config: dict[str, Any]) -> None:
        import ray

        configure_logging()  # the trial's progress lines go to its Ray worker log
        trial_id = tune.get_context().get_trial_id()
        if trial_id in done_before:
            tune.report(done_before[trial_id], checkpoint=tune.get_checkpoint())
            return

        trial_spec = spec.with_values(config)
        if not trial_spec.model.simulated:  # a simulated trial holds its GPUs, touches none
            require_cuda_for_gpu_trial(
                trial_spec.resources_per_trial.gpu,
                [str(g) for g in ray.get_gpu_ids()],
                allow_cpu_fallback,
            )
        work = Path(tune.get_context().get_trial_dir()) / "work"
        # Where the trial ran, for the run's tags: one GPU per trial is checkable afterwards.
        placement = {
            "backend": resolve_backend_name(trial_spec.model.backend),
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
        }

        def report(epoch: EpochReport) -> None:
            if (
                trial_spec.model.base != TINY_MODEL
                and not trial_spec.model.simulated
                and "base_revision" not in placement
            ):
                # The base is loaded (and cached) by now: pin the commit it came from.
                placement["base_revision"] = resolved_revision(
                    trial_spec.model.base, trial_spec.model.revision
                )
            tune.report(
                {
                    "epoch": epoch.epoch,
                    "epochs_planned": trial_spec.train.epochs,
                    **placement,
                    **epoch.metrics,
                    # Kept in Tune's result files (not a metric): bench/sweep_overhead.py.
                    "seconds": epoch.seconds,
                },
                checkpoint=tune.Checkpoint.from_directory(str(epoch.adapter_dir)),
            )

        task = load_task(trial_spec)
        if split is not None:
            task.reuse_split(split)
        # A retry (the trial's worker or node was lost) continues from its last epoch.
        checkpoint = tune.get_checkpoint()
        resume = resume_point(checkpoint, work / "resume") if checkpoint else None
        train_trial(trial_spec, work, task=task, on_epoch=report, resume_from=resume)

    resources = {"cpu": spec.resources_per_trial.cpu, "gpu": spec.resources_per_trial.gpu}
    return tune.with_resources(run_trial, resources)
