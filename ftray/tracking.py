"""MLflow: one parent run per sweep, one child run per trial, all written from the driver.

Trials never talk to MLflow themselves: a Ray Tune callback in the driver process turns
their reported results into child runs, so concurrent trials can never meet a locked
SQLite file, and a trial that dies cannot leave its run RUNNING.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ftray.spec import Spec, flatten

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ROLE_TAG = "ftray.role"
TRIAL_STATUS_TAG = "ftray.trial_status"
TRIAL_ID_TAG = "ftray.trial_id"
_SECRET_KEY = re.compile(r"(token|password|passwd|secret|api[_-]?key|credential)", re.IGNORECASE)


def tracking_uri(spec: Spec) -> str:
    """MLFLOW_TRACKING_URI, else the spec's tracking.uri, else sqlite:///mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or spec.tracking.uri or DEFAULT_TRACKING_URI


def safe_params(values: dict[str, Any]) -> dict[str, str]:
    """Parameters fit for logging: no key that names a secret, values as strings."""
    return {k: str(v)[:6000] for k, v in values.items() if not _SECRET_KEY.search(k)}


def trial_params(spec: Spec, config: dict[str, Any]) -> dict[str, str]:
    """The trial's effective flattened config."""
    return safe_params(flatten(spec.with_values(config)))


def progress(message: str) -> None:
    """A line of live sweep progress on stderr."""
    print(f"[ftray] {message}", file=sys.stderr, flush=True)


def log_metrics(client: Any, run_id: str, metrics: dict[str, Any], step: int) -> None:
    """Log numeric metrics at `step` in one batch."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [
        Metric(key=k, value=float(v), timestamp=now, step=step)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    for start in range(0, len(batch), 900):
        client.log_batch(run_id, metrics=batch[start : start + 900])


def log_samples_table(client: Any, run_id: str, samples_file: Path) -> None:
    """The per-prompt samples as an MLflow table (viewable side by side in the UI)."""
    rows = [json.loads(line) for line in samples_file.read_text().splitlines() if line.strip()]
    if not rows:
        return
    columns = list(rows[0])
    table = {
        c: [
            r.get(c) if isinstance(r.get(c), str | int | float | bool) else json.dumps(r.get(c))
            for r in rows
        ]
        for c in columns
    }
    client.log_table(run_id, data=table, artifact_file="samples.json")


class TrialRecord:
    """What the driver knows of one trial's child run."""

    def __init__(self, run_id: str, planned_epochs: int, status: str = "running") -> None:
        self.run_id = run_id
        self.planned_epochs = planned_epochs
        self.last_result: dict[str, Any] = {}
        self.status = status


FINISHED_STATUSES = ("completed", "pruned")
PLACEMENT_KEYS = {
    "backend": "ftray.backend",
    "node_id": "ftray.node_id",
    "gpu_ids": "ftray.gpu_ids",
}


class MlflowSweepCallback(Callback):
    """Creates, fills and closes one child run per Tune trial, from the driver.

    Picklable (Tune saves its run config): the MLflow client is rebuilt from the URI.
    """

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, spec: Spec) -> None:
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.spec = spec
        self.records: dict[str, TrialRecord] = {}
        self.storage_root: str | None = None
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> Any:
        """The MLflow client (created on first use)."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.uri)
        return self._client

    def adopt_existing_runs(self) -> int:
        """On resume: take over the parent's child runs; close the ones the dead driver left open.

        Returns how many orphaned runs were marked KILLED.
        """
        orphans = 0
        children = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
            max_results=5000,
        )
        for run in children:
            trial_id = run.data.tags.get(TRIAL_ID_TAG)
            if not trial_id:
                continue
            status = run.data.tags.get(TRIAL_STATUS_TAG, "running")
            if run.info.status == "RUNNING":
                self.client.set_tag(run.info.run_id, TRIAL_STATUS_TAG, "killed")
                self.client.set_terminated(run.info.run_id, "KILLED")
                status, orphans = "killed", orphans + 1
            planned = int(run.data.params.get("train.epochs", self.spec.train.epochs))
            record = TrialRecord(run.info.run_id, planned, status)
            if status in FINISHED_STATUSES:
                record.last_result = dict(run.data.metrics)
            self.records[trial_id] = record
        return orphans

    def finished_results(self) -> dict[str, dict[str, Any]]:
        """Last metrics of every trial whose run already finished (they must not run again)."""
        return {
            tid: r.last_result for tid, r in self.records.items() if r.status in FINISHED_STATUSES
        }

    def _record(self, trial: Any) -> TrialRecord:
        record = self.records.get(trial.trial_id)
        if (
            record is not None
            and record.status not in FINISHED_STATUSES
            and record.status != "running"
        ):
            # A trial the previous driver left unfinished, now resumed by Tune: reopen its run.
            self.client.update_run(record.run_id, status="RUNNING")
            self.client.set_tag(record.run_id, TRIAL_STATUS_TAG, "running")
            record.status = "running"
            progress(f"trial {trial.trial_id} resumed")
        if record is None:
            trial_spec = self.spec.with_values(trial.config)
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"trial-{trial.trial_id}",
                tags={
                    "mlflow.parentRunId": self.parent_run_id,
                    TRIAL_ID_TAG: trial.trial_id,
                    ROLE_TAG: "trial",
                    TRIAL_STATUS_TAG: "running",
                },
            )
            params = trial_params(self.spec, trial.config)
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in params.items()]
            for start in range(0, len(items), 90):
                self.client.log_batch(run.info.run_id, params=items[start : start + 90])
            record = TrialRecord(run.info.run_id, trial_spec.train.epochs)
            self.records[trial.trial_id] = record
            shown = ", ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
            progress(f"trial {trial.trial_id} started: {shown}")
        return record

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        record = self._record(trial)
        if not record.last_result:
            for key, tag in PLACEMENT_KEYS.items():
                if key in result:
                    self.client.set_tag(record.run_id, tag, str(result[key]))
        record.last_result = result
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = {k: v for k, v in result.items() if k in self._metric_keys(result)}
        log_metrics(self.client, record.run_id, metrics, step=epoch)
        objective = self.spec.search.objective if self.spec.search else None
        value = result.get(objective)
        done = sum(r.status != "running" for r in self.records.values())
        progress(
            f"trial {trial.trial_id} epoch {epoch}/{record.planned_epochs} "
            f"{objective}={_short(value)} ({done}/{self.spec.search.num_trials if self.spec.search else 1} trials done)"
        )

    @staticmethod
    def _metric_keys(result: dict[str, Any]) -> set[str]:
        ray_keys = {
            "epochs_planned",
            "training_iteration",
            "time_this_iter_s",
            "time_total_s",
            "timestamp",
            "time_since_restore",
            "iterations_since_restore",
            "pid",
            "done",
        }
        return {
            k
            for k, v in result.items()
            if k not in ray_keys and isinstance(v, int | float) and not isinstance(v, bool)
        }

    def _finish(self, trial: Any, status: str, run_status: str) -> None:
        record = self._record(trial)
        record.status = status
        self.client.set_tag(record.run_id, TRIAL_STATUS_TAG, status)
        try:
            if trial.checkpoint is not None:
                with trial.checkpoint.as_directory() as folder:
                    samples = Path(folder) / "samples.jsonl"
                    if samples.exists():
                        log_samples_table(self.client, record.run_id, samples)
        finally:
            self.client.set_terminated(record.run_id, run_status)
        epochs = int(record.last_result.get("epoch", 0))
        progress(f"trial {trial.trial_id} {status} after {epochs}/{record.planned_epochs} epochs")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        if record.status in FINISHED_STATUSES:
            progress(f"trial {trial.trial_id} had already finished; not run again")
            return
        from ftray.shared_storage import StorageGuard

        if self.storage_root and StorageGuard.problem_for(self.storage_root):
            # Stopped because a node cannot see the storage folder: not pruned by ASHA.
            self._finish(trial, "failed", "FAILED")
            return
        epochs = int(record.last_result.get("epoch", 0))
        self._finish(
            trial, "completed" if epochs >= record.planned_epochs else "pruned", "FINISHED"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "failed", "FAILED")

    def finished_count(self) -> int:
        """Trials that completed or were pruned (failed ones are not finished)."""
        return sum(r.status in FINISHED_STATUSES for r in self.records.values())

    def close_open_runs(self, status: str = "KILLED") -> None:
        """End every child run still open (the sweep stopped or crashed)."""
        for record in self.records.values():
            if record.status == "running":
                record.status = "failed" if status == "FAILED" else "killed"
                self.client.set_tag(record.run_id, TRIAL_STATUS_TAG, record.status)
                self.client.set_terminated(record.run_id, status)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
