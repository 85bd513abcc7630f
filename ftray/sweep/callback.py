"""The Ray Tune callback that hands trial events to the sweep's MLflow recorder.

It carries only the parent run id and the storage folder: Tune pickles its callbacks with
the experiment and restores them on `--resume`, and the restored callback finds this
driver's live `SweepRecorder` by that id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback

from ftray.sweep.storage import StorageGuard
from ftray.tracking.recorder import SweepRecorder
from ftray.tracking.tags import TrialStatus


def _error_line(trial: Any) -> str | None:
    """The last line of a trial's error, from the error file Tune writes for it."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


class RecordTrials(Callback):
    """Tune trial events -> child runs of the sweep `parent_run_id`."""

    def __init__(self, parent_run_id: str, storage_root: str | None = None) -> None:
        self.parent_run_id = parent_run_id
        self.storage_root = storage_root

    @property
    def recorder(self) -> SweepRecorder:
        """The live recorder of this sweep in the driver."""
        return SweepRecorder.for_sweep(self.parent_run_id)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.recorder.record(trial.trial_id, trial.config)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self.recorder.trial_result(trial.trial_id, trial.config, result)

    def _finish(self, trial: Any, status: TrialStatus, error: str | None = None) -> None:
        if trial.checkpoint is None:
            self.recorder.trial_finished(trial.trial_id, trial.config, status, error=error)
            return
        with trial.checkpoint.as_directory() as folder:
            samples = Path(folder) / "samples.jsonl"
            self.recorder.trial_finished(trial.trial_id, trial.config, status, samples, error)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self.recorder.record(trial.trial_id, trial.config)
        if record.status.finished:
            self.recorder.log_already_finished(trial.trial_id)
            return
        blind = self.storage_root and StorageGuard.problem_for(self.storage_root)
        if blind:
            # Stopped because a node cannot see the storage folder: not pruned by ASHA.
            self._finish(trial, TrialStatus.FAILED, blind)
            return
        done = record.epochs >= record.planned_epochs
        self._finish(trial, TrialStatus.COMPLETED if done else TrialStatus.PRUNED)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.recorder.trial_retried(trial.trial_id, trial.config, _error_line(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, TrialStatus.FAILED, _error_line(trial))
