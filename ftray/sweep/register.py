"""The winning trial's adapter, staged from its Tune checkpoint and registered in MLflow."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ftray.config.spec import TINY_MODEL, Spec
from ftray.sweep.objectives import TrialOutcome
from ftray.tracking.registry import Lineage, Registration, register_adapter
from ftray.tracking.tags import REGISTERED_VERSION


def register_winner(
    spec: Spec,
    client: Any,
    parent_id: str,
    winner: TrialOutcome,
    base: str,
    dataset_sha: str,
    force: bool = False,
) -> Registration:
    """Log the winner's adapter to its run, register it, and tag the parent run with its lineage."""
    assert spec.search is not None
    rule = spec.search.selection
    # The tiny model's folder is named by its content hash, which pins it exactly.
    revision = f"tiny-{Path(base).name}" if spec.model.base == TINY_MODEL else "unpinned"
    lineage = Lineage(
        base_model=spec.model.base,
        base_revision=revision,
        dataset_sha256=dataset_sha,
        spec_sha256=spec.source.sha256,
        objective=rule.metric,
        objective_value=winner.value(rule.metric),
        mode=rule.mode,
        trial_id=winner.trial_id,
        sweep_run_id=parent_id,
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
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for key, value in lineage.tags().items():
        client.set_tag(parent_id, key, value)
    client.set_tag(parent_id, REGISTERED_VERSION, registration.version)
    return registration
