"""The child runs of one sweep: created, filled and closed from the driver.

Trials never talk to MLflow themselves: the sweep layer turns Ray Tune's trial events into
calls on the sweep's `SweepRecorder`, in the driver process, so concurrent trials can never
meet a locked SQLite file, and a trial that dies cannot leave its run RUNNING. Nothing here
knows Ray.

The calls that only write (metrics, tags, params, samples, closing a run) go through a
`RunWriter`: one background thread makes them in order, so Tune's event loop never waits on
the tracking server's round trip (at hundreds of trials those waits added up to more than
the trials' own time). The sweep flushes the writer before it reads its runs back.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ftray.config.spec import Spec
from ftray.log import get_logger
from ftray.tracking.spend import Meter, TrialSpend, trial_seconds
from ftray.tracking.store import (
    child_runs,
    log_metrics,
    log_params,
    log_samples_table,
    trial_params,
)
from ftray.tracking.tags import (
    PARENT_RUN_ID,
    PHASE,
    PLACEMENT,
    RETRIES,
    ROLE,
    STOPPED_AT,
    STOPPED_ON,
    TRIAL_ERROR,
    TRIAL_ID,
    TRIAL_STATUS,
    TrialStatus,
)

log = get_logger()


class RunWriter:
    """MLflow writes made in order on one background thread.

    A failed write is logged once as a warning and raised again by the next `flush`, so a
    tracking server that went away still ends the sweep with its error; later writes are
    still tried (a passing outage loses only what it refused)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], bool] | None] = (
            queue.Queue()
        )
        self._error: BaseException | None = None
        self.seconds: list[float] = []
        """How long each timed write took (the tracking server's round trip), in order."""
        self._thread = threading.Thread(target=self._run, name="ftray-mlflow-writer", daemon=True)
        self._thread.start()

    def submit(self, call: Callable[..., Any], *args: Any, timed: bool = False) -> None:
        """Make `call(*args)` after every write submitted before it."""
        self._queue.put((call, args, timed))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            call, args, timed = item
            started = time.perf_counter()
            try:
                call(*args)
            except Exception as exc:  # raised again by flush
                if self._error is None:
                    log.warning(
                        f"MLflow write failed ({type(exc).__name__}: {exc}); retrying later writes"
                    )
                    self._error = exc
            finally:
                if timed:
                    self.seconds.append(time.perf_counter() - started)
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every write submitted so far is made; raise the first that failed."""
        self._queue.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Make what is pending and stop the thread (no error raised: see `flush`)."""
        self._queue.put(None)
        self._thread.join()


# Keys of a Tune result that are bookkeeping, not metrics of the trial.
_NOT_METRICS = {
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


NODE_LOSS_RETRIES = 20
"""How many times per trial losing its node is retried without counting against
`search.max_failures`. A node that vanishes (a spot instance, a killed raylet) is reported dead
only after Ray's health checks miss it for a while; until then Tune may place the retried
trial on it again, and each attempt fails at once, which would spend a trial's whole retry
budget in seconds."""


@dataclass
class TrialRecord:
    """What the driver knows of one trial's child run."""

    run_id: str
    planned_epochs: int
    status: TrialStatus = TrialStatus.RUNNING
    last_result: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    node_losses: int = 0
    """Retries after the trial's worker became unreachable (its node went away)."""
    phase: str | None = None
    """`confirm` for a confirmation trial (search.confirm)."""
    spend: TrialSpend = field(default_factory=TrialSpend)
    """The trial's wall time as reported, for its GPU-hours and the sweep's."""
    history: dict[int, dict[str, float]] = field(default_factory=dict)
    """epoch -> the metrics this driver logged for it (a retried epoch: its last report)."""

    def metric_history(self, metric: str) -> list[tuple[int, float]] | None:
        """[(epoch, value), ...] of `metric` as this driver logged it, or None when this
        driver did not see the trial from its first epoch (a resumed sweep's earlier epochs
        were logged by another driver: MLflow has them)."""
        if not self.history or set(self.history) != set(range(1, max(self.history) + 1)):
            return None
        return [(e, m[metric]) for e, m in sorted(self.history.items()) if metric in m]

    @property
    def epochs(self) -> int:
        """Epochs the trial reported."""
        return int(self.last_result.get("epoch", 0))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class SweepRecorder:
    """One child run per trial of the sweep whose parent run is `parent_run_id`.

    Recorders are kept per process by parent run id (`for_sweep`), so whatever object
    delivers Tune's events (a callback restored from Tune's saved state included) reaches
    the live recorder of this driver.
    """

    _live: ClassVar[dict[str, SweepRecorder]] = {}

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, spec: Spec) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.spec = spec
        self.client = MlflowClient(uri)
        self.records: dict[str, TrialRecord] = {}
        self.phase: str | None = None
        """Set to `confirm` while the confirmation trials run: their runs are tagged so."""
        self.meter = Meter.of(spec)
        self.writer = RunWriter()
        self._live[parent_run_id] = self

    @property
    def log_seconds(self) -> list[float]:
        """How long each epoch's metrics took to log (MLflow's round trip), in order."""
        return self.writer.seconds

    def flush(self) -> None:
        """Every write so far made (see `RunWriter.flush`)."""
        self.writer.flush()

    @classmethod
    def for_sweep(cls, parent_run_id: str) -> SweepRecorder:
        """The recorder of a sweep running in this process."""
        return cls._live[parent_run_id]

    def release(self) -> None:
        """Make the pending writes, stop the writer and forget this recorder (the sweep is
        over)."""
        self.writer.close()
        self._live.pop(self.parent_run_id, None)

    def _tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Set `tags` on the run in one write, in the background."""
        from mlflow.entities import RunTag

        if tags:
            items = [RunTag(k, v) for k, v in tags.items()]
            self.writer.submit(lambda: self.client.log_batch(run_id, tags=items))

    def adopt_existing_runs(self) -> int:
        """On resume: take over the parent's child runs; close the ones a dead driver left open.

        Returns how many orphaned runs were marked KILLED.
        """
        orphans = 0
        parent = self.client.get_run(self.parent_run_id)
        for run in child_runs(self.client, parent):
            trial_id = run.data.tags.get(TRIAL_ID)
            if not trial_id:
                continue
            status = TrialStatus(run.data.tags.get(TRIAL_STATUS, TrialStatus.RUNNING.value))
            if run.info.status == "RUNNING":
                self.client.set_tag(run.info.run_id, TRIAL_STATUS, TrialStatus.KILLED.value)
                self.client.set_terminated(run.info.run_id, "KILLED")
                status, orphans = TrialStatus.KILLED, orphans + 1
            planned = int(run.data.params.get("train.epochs", self.spec.train.epochs))
            record = TrialRecord(run.info.run_id, planned, status, phase=run.data.tags.get(PHASE))
            if status.finished:
                record.last_result = dict(run.data.metrics)
            # The spend the previous driver logged (its trials' wall time), for the sums.
            held = run.data.metrics.get(self.meter.hours_metric)
            if held is not None and self.meter.units > 0:
                record.spend.seconds = held * 3600 / self.meter.units
            self.records[trial_id] = record
        return orphans

    def finished_results(self) -> dict[str, dict[str, Any]]:
        """Last metrics of every trial whose run already finished (they must not run again)."""
        return {tid: r.last_result for tid, r in self.records.items() if r.status.finished}

    def finished_count(self) -> int:
        """Trials that completed or were pruned (failed ones are not finished)."""
        return sum(r.status.finished for r in self.records.values())

    def record(self, trial_id: str, config: dict[str, Any]) -> TrialRecord:
        """The trial's record, creating its child run (or reopening a killed one) first."""
        record = self.records.get(trial_id)
        if record is not None and record.status in (TrialStatus.KILLED, TrialStatus.FAILED):
            # A trial the previous driver left unfinished, now resumed by Tune: reopen its run.
            self.writer.submit(self.client.update_run, record.run_id, "RUNNING")
            self._tags(record.run_id, {TRIAL_STATUS: TrialStatus.RUNNING.value})
            record.status = TrialStatus.RUNNING
            log.info(f"trial {trial_id} resumed")
        if record is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"trial-{trial_id}",
                tags={
                    PARENT_RUN_ID: self.parent_run_id,
                    TRIAL_ID: trial_id,
                    ROLE: "trial",
                    TRIAL_STATUS: TrialStatus.RUNNING.value,
                    **({PHASE: self.phase} if self.phase else {}),
                },
            )
            self.writer.submit(
                log_params, self.client, run.info.run_id, trial_params(self.spec, config)
            )
            planned = self.spec.with_values(config).train.epochs
            record = TrialRecord(run.info.run_id, planned, phase=self.phase)
            self.records[trial_id] = record
            shown = ", ".join(f"{k}={_short(v)}" for k, v in config.items())
            log.info(f"trial {trial_id} started: {shown}")
        return record

    def trial_result(self, trial_id: str, config: dict[str, Any], result: dict[str, Any]) -> None:
        """Log one epoch's metrics (step = epoch) and, on the first, where the trial runs."""
        record = self.record(trial_id, config)
        if not record.last_result:
            placement = {tag: str(result[key]) for key, tag in PLACEMENT.items() if key in result}
            self._tags(record.run_id, placement)
        record.last_result = result
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = {
            k: v
            for k, v in result.items()
            if k not in _NOT_METRICS and isinstance(v, int | float) and not isinstance(v, bool)
        }
        seconds = trial_seconds(result)
        metrics |= self.meter.charge(seconds)
        record.spend.report(time.time(), seconds, metrics)
        record.history[epoch] = metrics
        # Stamped now, not when the writer gets to it.
        now = int(time.time() * 1000)
        self.writer.submit(log_metrics, self.client, record.run_id, metrics, epoch, now, timed=True)
        shown = " ".join(
            f"{goal.metric}={_short(result.get(goal.metric))}"
            for goal in (self.spec.search.goals if self.spec.search else ())
        )
        done = sum(r.status != TrialStatus.RUNNING for r in self.records.values())
        total = self.spec.search.num_trials if self.spec.search else 1
        log.info(
            f"trial {trial_id} epoch {epoch}/{record.planned_epochs} {shown} "
            f"({done}/{total} trials done)"
        )

    def trial_retried(
        self, trial_id: str, config: dict[str, Any], error: str | None, node_lost: bool = False
    ) -> bool:
        """A trial failed and Tune runs it again from its last epoch checkpoint. True when
        the failure is not the trial's own and must not count against
        `search.max_failures`: its node went away (`node_lost`), at most
        `NODE_LOSS_RETRIES` times per trial."""
        record = self.record(trial_id, config)
        record.retries += 1
        self._tags(record.run_id, {RETRIES: str(record.retries)})
        forgiven = node_lost and record.node_losses < NODE_LOSS_RETRIES
        if forgiven:
            record.node_losses += 1
        counted = record.retries - record.node_losses
        allowed = self.spec.search.max_failures if self.spec.search else counted
        why = (
            f"lost its node after epoch {record.epochs}; not counted against "
            f"search.max_failures ({counted}/{allowed} used)"
            if forgiven
            else f"failed after epoch {record.epochs} ({error or 'no error text'}); "
            f"{counted}/{allowed} of search.max_failures used"
        )
        log.warning(f"trial {trial_id} {why}; retrying from its last epoch checkpoint")
        return forgiven

    def trial_finished(
        self,
        trial_id: str,
        config: dict[str, Any],
        status: TrialStatus,
        samples_file: Path | None = None,
        error: str | None = None,
    ) -> None:
        """Close the trial's run: FINISHED when completed or pruned, FAILED otherwise; a pruned
        run is tagged with the metric ASHA stopped it on and the epoch (rung) it stopped at."""
        record = self.record(trial_id, config)
        record.status = status
        tags = {TRIAL_STATUS: status.value}
        stopped = ""
        search = self.spec.search
        if status is TrialStatus.PRUNED and search is not None and search.scheduler == "asha":
            metric = self.spec.stopping.metric
            tags |= {STOPPED_ON: metric, STOPPED_AT: str(record.epochs)}
            stopped = f" (ASHA: {metric}={_short(record.last_result.get(metric))})"
        if error:
            tags[TRIAL_ERROR] = error[:5000]
        self._tags(record.run_id, tags)
        if samples_file is not None and samples_file.exists():
            self.writer.submit(log_samples_table, self.client, record.run_id, samples_file)
        ended = "FINISHED" if status.finished else "FAILED"
        # The run ends when the trial did, not when the writer gets to it: runs' times say
        # which trials ran side by side (one GPU each).
        self.writer.submit(
            self.client.set_terminated, record.run_id, ended, int(time.time() * 1000)
        )
        log.info(
            f"trial {trial_id} {status} after {record.epochs}/{record.planned_epochs} epochs"
            f"{stopped}"
        )

    def log_already_finished(self, trial_id: str) -> None:
        """Say that Tune restored a trial MLflow already holds as finished (not run again)."""
        log.info(f"trial {trial_id} had already finished; not run again")

    def close_open_runs(self, run_status: str = "KILLED") -> None:
        """End every child run still open (the sweep stopped or crashed)."""
        status = TrialStatus.FAILED if run_status == "FAILED" else TrialStatus.KILLED
        with contextlib.suppress(Exception):  # its error was logged; the runs still close
            self.writer.flush()
        for record in self.records.values():
            if record.status == TrialStatus.RUNNING:
                record.status = status
                with contextlib.suppress(Exception):
                    self.client.set_tag(record.run_id, TRIAL_STATUS, status.value)
                self.client.set_terminated(record.run_id, run_status)
