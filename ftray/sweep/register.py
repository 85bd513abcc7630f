"""The winning trial's adapter, staged from its Tune checkpoint and registered in MLflow."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ftray.config.spec import TINY_MODEL, Spec
from ftray.log import get_logger
from ftray.sweep.objectives import TrialOutcome
from ftray.tasks import Task
from ftray.tasks.intervals import HIGH, LOW, is_interval, shown_with_interval
from ftray.tracking.registry import Lineage, ModelPackage, Registration, register_adapter
from ftray.tracking.spend import describe_spend
from ftray.tracking.tags import REGISTERED_VERSION, TEST_PREFIX
from ftray.training.checkpoint import copy_adapter

log = get_logger()


def score_test_split(
    spec: Spec,
    split: dict[str, Any],
    checkpoint: Any,
    base: str,
    revision: str | None,
) -> tuple[dict[str, float], int]:
    """The task's metrics for the adapter in `checkpoint` on the test split, and how many
    turns that is. Runs where the trial ran (a Ray worker with the trial's resources)."""
    from ftray.models.peft_backend import load_for_inference
    from ftray.tasks import load_task
    from ftray.training.evaluate import evaluate
    from ftray.training.trial import quiet_libraries

    task = load_task(spec)
    task.reuse_split(split)
    cases = task.test_cases()
    with checkpoint.as_directory() as folder:
        model, tokenizer = load_for_inference(base, folder, spec.model.load_in_4bit, revision)
        quiet_libraries()
        metrics, _ = evaluate(task, model, tokenizer, spec.train.batch_size * 2, cases=cases)
    return metrics, len(cases)


def tag_test_metrics(
    spec: Spec, client: Any, registration: Registration, winner: TrialOutcome, base: str, task: Task
) -> dict[str, float]:
    """Score the newly registered version on the task's test split (which no trial saw) and
    put the metrics on the version as `ftray.test.<metric>` tags; nothing for tasks without
    a test split."""
    split = task.split_record()
    if split is None or not task.test_cases() or winner.checkpoint is None:
        return {}
    import ray

    trial_spec = spec.with_values(winner.config)
    revision = winner.details.get("base_revision")
    revision = None if revision in (None, "local", "unresolved") else revision
    args = (trial_spec, split, winner.checkpoint, base, revision)
    if ray.is_initialized():
        resources = trial_spec.resources_per_trial
        remote = ray.remote(num_cpus=resources.cpu, num_gpus=resources.gpu)(score_test_split)
        metrics, turns = ray.get(remote.remote(*args))
    else:
        metrics, turns = score_test_split(*args)
    for key, value in metrics.items():
        client.set_model_version_tag(
            registration.name, registration.version, f"{TEST_PREFIX}{key}", f"{value:.6g}"
        )
    client.set_model_version_tag(
        registration.name, registration.version, f"{TEST_PREFIX}turns", str(turns)
    )
    shown = " ".join(
        f"{k}={shown_with_interval(v, metrics.get(k + LOW), metrics.get(k + HIGH))}"
        for k, v in metrics.items()
        if "/" not in k and not is_interval(k)
    )
    log.info(f"version {registration.version} on the test split ({turns} turns): {shown}")
    return metrics


def sweep_spend_line(client: Any, parent_id: str) -> str | None:
    """`Sweep: spent ...` from the parent run's spend metrics (logged before registration)."""
    line = describe_spend(client.get_run(parent_id).data.metrics)
    return f"Sweep: {line}." if line else None


def register_winner(
    spec: Spec,
    client: Any,
    parent_id: str,
    winner: TrialOutcome,
    base: str,
    task: Task,
    force: bool = False,
    spec_sha256: str | None = None,
) -> Registration:
    """Register the winner's adapter as an MLflow Model (with the tiny base inside it, or the
    Hub base named by id and revision) and tag the parent run with its lineage; `spec_sha256`
    is the hash of the spec the sweep recorded (default: `spec`'s own)."""
    assert spec.search is not None
    rule = spec.search.selection
    tiny = spec.model.base == TINY_MODEL
    # The tiny model's folder is named by its content hash, which pins it exactly.
    revision = (
        f"tiny-{Path(base).name}" if tiny else winner.details.get("base_revision", "unresolved")
    )
    lineage = Lineage(
        base_model=spec.model.base,
        base_revision=revision,
        dataset_sha256=task.dataset_sha256,
        spec_sha256=spec_sha256 or spec.source.sha256,
        objective=rule.metric,
        objective_value=winner.value(rule.metric),
        mode=rule.mode,
        trial_id=winner.trial_id,
        sweep_run_id=parent_id,
        heldout_fingerprint=task.heldout_fingerprint(),
        objective_ci_low=winner.metrics.get(rule.metric + LOW),
        objective_ci_high=winner.metrics.get(rule.metric + HIGH),
    )
    reported = set(task.metric_names())
    # The input example: held-out questions (a chat case may end on a tool's result instead).
    questions = [
        c.messages[-1]["content"] for c in task.eval_cases() if c.messages[-1]["role"] == "user"
    ]
    package = ModelPackage(
        base_dir=Path(base) if tiny else None,
        config={
            "base_model": spec.model.base if tiny else base,
            "base_revision": None if tiny or revision in ("local", "unresolved") else revision,
            "load_in_4bit": spec.model.load_in_4bit,
            "max_new_tokens": task.max_new_tokens,
            "batch_size": spec.train.batch_size * 2,
            "task": spec.task.kind,
        },
        metrics={
            k: v
            for k, v in winner.metrics.items()
            if k.removesuffix("_sd").removesuffix("_seeds") in reported
            or k in ("epoch", "cost", "gpu_hours", "cpu_hours")
        },
        notes=tuple(filter(None, [sweep_spend_line(client, parent_id)])),
        example=tuple(questions[:2]) or ModelPackage.example,
        task_config=task.serving_config(),
    )
    staging = Path(tempfile.mkdtemp(prefix="ftray-adapter-"))
    try:
        with winner.checkpoint.as_directory() as folder:
            copy_adapter(folder, staging / "adapter")
        registration = register_adapter(
            client,
            spec.registered_model_name,
            winner.run_id,
            staging / "adapter",
            lineage,
            force=force,
            package=package,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if registration.created:
        tag_test_metrics(spec, client, registration, winner, base, task)
    for key, value in lineage.tags().items():
        client.set_tag(parent_id, key, value)
    client.set_tag(parent_id, REGISTERED_VERSION, registration.version)
    return registration
