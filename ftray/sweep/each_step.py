"""`ftray sweep --each-step`: one sweep per pipeline step, each trial training and scoring
only its step. The steps' sweeps are ordinary sweeps (`run_sweep`) of the spec restricted to
one step (`task.only_step`), each registering its winner as `<registered_model>-<step>`,
recorded as children of one parent run for the whole run. They run one after another."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from ftray.config.spec import Spec
from ftray.errors import InputError
from ftray.log import get_logger
from ftray.redaction import mask_url_passwords
from ftray.sweep.lease import Lease, refuse_live
from ftray.sweep.resume import NothingToResume, refuse_unfinished
from ftray.sweep.runner import (
    StepOf,
    SweepInterrupted,
    SweepResult,
    run_sweep,
    sweep_experiment,
)
from ftray.sweep.steps import StepSweep
from ftray.tracking.opening import open_store
from ftray.tracking.store import (
    latest_sweep_run,
    log_metrics,
    spec_document,
    step_sweep_run,
    tracking_uri,
)
from ftray.tracking.tags import EACH_STEP_ROLE, ROLE, SPEC_SHA256, STEPS

log = get_logger()
SUMMED = ("trials_completed", "trials_pruned", "trials_failed", "epochs_trained", "wall_seconds")


@dataclass
class EachStepResult:
    """What an each-step run produced: each step's sweep (None for a step whose sweep had
    already finished when `--resume` continued the run)."""

    run_id: str
    results: dict[str, SweepResult | None]
    tracking_uri: str

    @property
    def failed_steps(self) -> list[str]:
        """Steps whose every trial failed."""
        return [step for step, r in self.results.items() if r is not None and r.all_failed]


def open_each_step_run(
    spec: Spec, client: Any, steps: list[str], extra_tags: dict[str, str] | None = None
) -> Any:
    """The parent run of a new each-step run in the spec's experiment (`extra_tags`, the
    driver's lease, set as it is created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = client.create_run(
        sweep_experiment(spec, client),
        run_name=f"each-step-{stamp}",
        tags={
            ROLE: EACH_STEP_ROLE,
            SPEC_SHA256: spec.source.sha256,
            STEPS: json.dumps(steps),
            **(extra_tags or {}),
        },
    )
    client.log_text(run.info.run_id, spec_document(spec), "spec.yaml")
    return run


def each_step_run_to_resume(spec: Spec, client: Any, uri: str, steps: list[str]) -> Any:
    """The spec's last run when it is an unfinished each-step run over the same steps;
    InputError (or NothingToResume) otherwise."""
    run = latest_sweep_run(client, spec)
    refuse_live(run)
    where = f"'{spec.name}' at {mask_url_passwords(uri)}"
    if run is None:
        raise InputError.at(
            spec.source.path, None, f"no earlier sweep of {where} to resume; run without --resume"
        )
    if run.data.tags.get(ROLE) != EACH_STEP_ROLE:
        raise InputError.at(
            spec.source.path,
            None,
            f"the last sweep of {where} is one sweep of every step together; resume it without "
            "--each-step and --step",
        )
    recorded = json.loads(run.data.tags.get(STEPS, "[]"))
    if recorded != steps:
        raise InputError.at(
            spec.source.path,
            None,
            f"the last each-step run of {where} swept the steps {', '.join(recorded)}, not "
            f"{', '.join(steps)}; resume it with the same --each-step or --step arguments",
        )
    if run.info.status == "FINISHED":
        raise NothingToResume(run.info.run_id)
    return run


def each_step_summary(spec: Spec, client: Any, run_id: str, steps: list[str]) -> dict[str, float]:
    """The each-step run's metrics: trial counts, epochs and wall time summed over its steps'
    sweeps, and each step's best value of every objective as `<metric>/<step>` (the metric's
    own name when it already ends with the step)."""
    assert spec.search is not None
    summary: dict[str, float] = dict.fromkeys(SUMMED, 0.0)
    for step in steps:
        run = step_sweep_run(client, run_id, step)
        if run is None:
            continue
        metrics = run.data.metrics
        for key in SUMMED:
            summary[key] += metrics.get(key, 0.0)
        for goal in spec.search.goals:
            if goal.metric in metrics:
                name = goal.metric if goal.metric.endswith(f"/{step}") else f"{goal.metric}/{step}"
                summary[name] = metrics[goal.metric]
    return summary


def run_each_step(
    spec: Spec,
    sweeps: list[StepSweep],
    resume: bool = False,
    force: bool = False,
    new: bool = False,
) -> EachStepResult:
    """Sweep each step in turn under one parent run (or continue the last each-step run:
    finished steps are kept, the others resumed or started); the parent run is closed
    whatever happens. As for one sweep, a new each-step run while the spec's last sweep has
    not finished needs `new` (UnfinishedSweep otherwise), and none starts or resumes beside a
    live one (SweepRunning); the each-step run holds the lease of all its steps' sweeps."""
    uri = tracking_uri(spec)
    client = open_store(uri)
    steps = [sweep.step for sweep in sweeps]
    if resume:
        run = each_step_run_to_resume(spec, client, uri, steps)
        lease = Lease.take_over(client, run).start()
        client.update_run(run.info.run_id, status="RUNNING")
    else:
        refuse_unfinished(latest_sweep_run(client, spec), new)
        lease, lease_tags = Lease.for_new_run(uri)
        run = open_each_step_run(spec, client, steps, lease_tags)
        lease.start(run.info.run_id)
    run_id = run.info.run_id
    log.info(
        f"{spec.name}: one sweep per step, one after another: {', '.join(steps)} "
        f"(MLflow parent run {run.info.run_name})"
    )
    results: dict[str, SweepResult | None] = {}
    status = "FAILED"
    try:
        for sweep in sweeps:
            earlier = step_sweep_run(client, run_id, sweep.step) if resume else None
            if earlier is not None and earlier.info.status == "FINISHED":
                log.info(f"step {sweep.step}: its sweep {earlier.info.run_name} finished; kept")
                results[sweep.step] = None
                continue
            results[sweep.step] = run_sweep(
                sweep.spec,
                sweep.task,
                resume=earlier is not None,
                force=force,
                step_of=StepOf(sweep.step, run_id),
            )
        log_metrics(client, run_id, each_step_summary(spec, client, run_id, steps), step=0)
        result = EachStepResult(run_id, results, uri)
        status = "FAILED" if result.failed_steps else "FINISHED"
        return result
    except (KeyboardInterrupt, SweepInterrupted):
        status = "KILLED"
        raise
    finally:
        if lease.lost is None:  # else the run is another driver's now
            client.set_terminated(run_id, status)
        lease.release(client)
