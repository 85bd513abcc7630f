"""Every name ftray writes into MLflow: its own `ftray.*` tags and the trial statuses.

MLflow's own tags come from `mlflow.utils.mlflow_tags`; the experiment-kind tag the UI reads
has no constant there, so it is named here.
"""

from __future__ import annotations

from enum import Enum

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

PARENT_RUN_ID = MLFLOW_PARENT_RUN_ID
EXPERIMENT_KIND = "mlflow.experimentKind"
"""Which view MLflow's UI opens an experiment in (no constant for it in mlflow_tags)."""
MODEL_TRAINING_KIND = "custom_model_development"

ROLE = "ftray.role"
"""`sweep` on a sweep's parent run, `trial` on a child run; an `--each-step` run has an
`each-step` parent run with one `step` run (a sweep's parent) per step under it."""
EACH_STEP_ROLE = "each-step"
STEP_ROLE = "step"
STEP = "ftray.step"
"""On a step's sweep: the pipeline step it trained and scored."""
STEPS = "ftray.steps"
"""On an each-step run: JSON list of the steps it sweeps, in order."""
TRIAL_ID = "ftray.trial_id"
TRIAL_STATUS = "ftray.trial_status"
TRIAL_ERROR = "ftray.error"
RETRIES = "ftray.retries"
"""How many times a trial was retried from its last epoch checkpoint (set when it was)."""
BACKEND = "ftray.backend"
NODE_ID = "ftray.node_id"
GPU_IDS = "ftray.gpu_ids"
PARETO = "ftray.pareto"
"""With several objectives: `true` on child runs on the Pareto front of finished trials."""

SPEC_SHA256 = "ftray.spec_sha256"
DATASET_SHA256 = "ftray.dataset_sha256"
"""sha256 of the task's data files: on a parent run (what `--resume` compares) and a version."""
OBJECTIVES = "ftray.objectives"
"""JSON list of {metric, mode}: what the sweep optimised."""
SELECT = "ftray.select"
"""JSON {metric, mode, where}: which finished trial the sweep registers."""
PRUNE = "ftray.prune"
"""JSON {metric, mode, grace_period, reduction_factor, max_t, rungs}: what ASHA stopped
trials on and the epochs of its rungs (absent with scheduler fifo)."""
STOPPED_ON = "ftray.stopped_on"
"""On a pruned trial's run: the metric ASHA stopped it on."""
STOPPED_AT = "ftray.stopped_at"
"""On a pruned trial's run: the epoch (ASHA's rung) it was stopped at."""
SELECTION = "ftray.selection"
"""`none` when no finished trial met the select rule (nothing registered)."""
TUNE_EXPERIMENT = "ftray.tune_experiment"
OPTUNA_STUDY = "ftray.optuna_study"
REGISTERED_VERSION = "ftray.registered_version"
PHASE = "ftray.phase"
"""`confirm` on a confirmation trial's run (`search.confirm`)."""
CONFIRMED = "ftray.confirmed_trial"
"""On a parent run with `search.confirm`: the trial whose configuration won on its mean."""
LEASE = "ftray.lease"
"""On a running sweep's parent run (or each-step run): JSON {host, pid, job, token, heartbeat,
seconds}, the driver's lease (ftray.sweep.lease); deleted when the driver ends."""
TEST_PREFIX = "ftray.test."
"""Version tags `ftray.test.<metric>`: the registered version scored on the test split."""
LINEAGE_PREFIX = "ftray."
"""Lineage tags on a registered version: ftray.base_model, ftray.dataset_sha256, ..."""

BASE_REVISION = "ftray.base_revision"
PLACEMENT = {
    "backend": BACKEND,
    "node_id": NODE_ID,
    "gpu_ids": GPU_IDS,
    "base_revision": BASE_REVISION,
}
"""Keys a trial reports about where it ran -> the child-run tag that records each."""


class TrialStatus(str, Enum):
    """What happened to a trial (the `ftray.trial_status` tag of its child run)."""

    RUNNING = "running"
    COMPLETED = "completed"
    """Trained every epoch it was given."""
    PRUNED = "pruned"
    """Stopped early by the scheduler (ASHA)."""
    FAILED = "failed"
    """Raised, or was stopped because its node could not run it."""
    KILLED = "killed"
    """Left open by a driver that died; Tune may run the trial again on resume."""

    @property
    def finished(self) -> bool:
        """Completed or pruned: it has results and is never run again."""
        return self in (TrialStatus.COMPLETED, TrialStatus.PRUNED)

    def __str__(self) -> str:
        return self.value
