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


def _last_failure(trial: Any) -> list[str]:
    """The non-blank lines of a trial's latest failure, from the error file Tune writes for
    it (one `Failure # N` block per failure, appended)."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        return []
    block = text.rsplit("Failure # ", 1)[-1]
    return [line.strip() for line in block.splitlines() if line.strip()]


def _error_line(trial: Any) -> str | None:
    """The last line of a trial's latest error."""
    lines = _last_failure(trial)
    return lines[-1] if lines else None


NODE_LOST = (
    "may or may not have been executed on the actor",
    "The actor died because its node has died",
)
"""How Ray words a worker lost with its node: `ActorUnavailableError` (the node or raylet
stopped answering) and `ActorDiedError` once the node is declared dead. A worker that died
on a live node (the trial running out of memory, say) is the trial's own failure."""


def lost_its_node(trial: Any) -> bool:
    """Whether the trial's latest failure was losing its node, from the error text Tune
    wrote for it (Tune's pickled copy of the error is never read)."""
    text = "\n".join(_last_failure(trial))
    return any(marker in text for marker in NODE_LOST)


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
        node_lost = lost_its_node(trial)
        if self.recorder.trial_retried(trial.trial_id, trial.config, _error_line(trial), node_lost):
            # Tune counted this failure against FailureConfig.max_failures; it is no fault
            # of the trial's, so the trial keeps the retries its spec allows.
            trial.run_metadata.num_failures = max(0, trial.run_metadata.num_failures - 1)
            trial.run_metadata.invalidate_cache()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, TrialStatus.FAILED, _error_line(trial))
