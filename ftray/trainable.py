"""The Ray Tune function trainable: one trial = `train_trial` with the trial's config,
reporting every epoch's metrics and adapter checkpoint to Tune."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftray.spec import Spec
from ftray.train import EpochReport, train_trial


def make_trainable(spec: Spec) -> Any:
    """A Tune trainable bound to `spec`, asking for `resources_per_trial`."""
    from ray import tune

    def run_trial(config: dict[str, Any]) -> None:
        trial_spec = spec.with_values(config)
        work = Path(tune.get_context().get_trial_dir()) / "work"

        def report(epoch: EpochReport) -> None:
            (epoch.adapter_dir / "samples.jsonl").write_text(
                "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in epoch.samples)
            )
            tune.report(
                {"epoch": epoch.epoch, "epochs_planned": trial_spec.train.epochs, **epoch.metrics},
                checkpoint=tune.Checkpoint.from_directory(str(epoch.adapter_dir)),
            )

        train_trial(trial_spec, work, on_epoch=report)

    resources = {"cpu": spec.resources_per_trial.cpu, "gpu": spec.resources_per_trial.gpu}
    return tune.with_resources(run_trial, resources)
