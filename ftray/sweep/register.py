"""The winning trial's adapter, staged from its Tune checkpoint and registered in MLflow."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ftray.config.spec import TINY_MODEL, Spec
from ftray.sweep.objectives import TrialOutcome
from ftray.tasks import Task
from ftray.tracking.registry import Lineage, ModelPackage, Registration, register_adapter
from ftray.tracking.tags import REGISTERED_VERSION


def register_winner(
    spec: Spec,
    client: Any,
    parent_id: str,
    winner: TrialOutcome,
    base: str,
    task: Task,
    force: bool = False,
) -> Registration:
    """Register the winner's adapter as an MLflow Model (with the tiny base inside it, or the
    Hub base named by id and revision) and tag the parent run with its lineage."""
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
        spec_sha256=spec.source.sha256,
        objective=rule.metric,
        objective_value=winner.value(rule.metric),
        mode=rule.mode,
        trial_id=winner.trial_id,
        sweep_run_id=parent_id,
        heldout_fingerprint=task.heldout_fingerprint(),
    )
    reported = set(task.metric_names())
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
        metrics={k: v for k, v in winner.metrics.items() if k in reported or k == "epoch"},
        example=tuple(c.messages[-1]["content"] for c in task.eval_cases()[:2]),
    )
    staging = Path(tempfile.mkdtemp(prefix="ftray-adapter-"))
    try:
        with winner.checkpoint.as_directory() as folder:
            shutil.copytree(folder, staging / "adapter")
        (staging / "adapter" / "samples.jsonl").unlink(missing_ok=True)
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
    for key, value in lineage.tags().items():
        client.set_tag(parent_id, key, value)
    client.set_tag(parent_id, REGISTERED_VERSION, registration.version)
    return registration
