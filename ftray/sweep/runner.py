"""`ftray sweep`: Ray Tune runs the trials, Optuna proposes configurations, ASHA stops poor
trials, and the driver records everything in MLflow and registers the winner."""

from __future__ import annotations

import json
import math
import os
import secrets
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftray.config.spec import Spec
from ftray.errors import InputError
from ftray.log import get_logger, library_prints_to_debug, quiet_library_logs
from ftray.sweep.budget import Budget, BudgetStopper
from ftray.sweep.callback import RecordTrials
from ftray.sweep.confirm import (
    PHASE_CONFIRM,
    candidates,
    confirmation_configs,
    confirmed_winner,
    groups_of,
)
from ftray.sweep.lease import Lease
from ftray.sweep.objectives import TrialOutcome, choose_winner, pareto_front, ranked
from ftray.sweep.pending import PendingTimeout, PendingWatch, trial_resources, warn_if_unavailable
from ftray.sweep.ray_session import init_ray, release_ray_in_background, set_tune_environment
from ftray.sweep.register import register_winner
from ftray.sweep.resume import (
    SPEC_ARTIFACT,
    SPLIT_ARTIFACT,
    reuse_stored_split,
    sweep_to_continue,
    with_recorded_stopping,
)
from ftray.sweep.searcher import build_scheduler, build_searcher
from ftray.sweep.space import CheckedBase, asha_max_t, asha_rungs, checked_base
from ftray.sweep.storage import StorageGuard, guard_shared_storage, storage_problem
from ftray.tasks import Task
from ftray.tracking.leaderboard import describe_pruning
from ftray.tracking.opening import open_store
from ftray.tracking.recorder import SweepRecorder
from ftray.tracking.registry import Registration
from ftray.tracking.spend import sweep_spend
from ftray.tracking.store import (
    TrackingStore,
    find_store,
    log_metrics,
    log_params,
    open_experiment,
    ray_job_folder,
    safe_params,
    spec_document,
    store_in_ray_job_warning,
)
from ftray.tracking.tags import (
    CONFIRMED,
    DATASET_SHA256,
    EXPERIMENT_KIND,
    MODEL_TRAINING_KIND,
    OBJECTIVES,
    OPTUNA_STUDY,
    PARENT_RUN_ID,
    PARETO,
    PRUNE,
    ROLE,
    SELECT,
    SELECTION,
    SPEC_SHA256,
    STEP,
    STEP_ROLE,
    TUNE_EXPERIMENT,
    TrialStatus,
)

RESULTS_DIR = "ray_results"
log = get_logger()


@dataclass
class SweepResult:
    """What a sweep produced."""

    parent_run_id: str
    experiment_path: str
    outcomes: list[TrialOutcome]
    registration: Registration | None
    tracking_uri: str
    unregistered_reason: str | None = None

    @property
    def all_failed(self) -> bool:
        """Every trial failed (the sweep failed: nothing registered, parent run FAILED)."""
        return bool(self.outcomes) and all(o.status is TrialStatus.FAILED for o in self.outcomes)


@dataclass(frozen=True)
class StepOf:
    """Where one step's sweep of an `--each-step` run is recorded: a child of that run's
    parent run, in the spec's experiment."""

    step: str
    run_id: str
    """The each-step run's parent run."""


class SweepInterrupted(Exception):
    """The sweep was stopped (SIGINT, `ray job stop`) before every trial finished; Tune saved its state."""


def tune_storage_path(spec: Spec) -> str:
    """Ray Tune's storage_path: `storage.tune_path`, else ray_results beside a local MLflow
    store, else ~/ray_results; never the current folder, which under `ray job submit` is
    the job's package that Ray deletes."""
    if spec.storage.tune_path:
        return spec.storage.tune_path
    return str(find_store(None, spec).lasting_folder() / RESULTS_DIR)


def warn_of_folders_ray_deletes(store: TrackingStore, storage_root: str) -> None:
    """Warn when the MLflow store or Tune's storage lies inside a Ray job's working directory."""
    warning = store_in_ray_job_warning(store)
    if warning:
        log.warning(warning)
    folder = ray_job_folder(Path(storage_root)) if "://" not in storage_root else None
    if folder is not None:
        log.warning(
            f"storage.tune_path {storage_root} lies inside the Ray job's working directory "
            f"{folder}, which Ray deletes with the job's files: Tune's results and checkpoints "
            "(and --resume) would go with it; give an absolute storage.tune_path outside it"
        )


def make_trainable_for(
    spec: Spec,
    finished: dict[str, dict[str, Any]] | None = None,
    split: dict[str, Any] | None = None,
) -> Any:
    """The Tune trainable (imported late: it pulls in the training stack)."""
    from ftray.sweep.trainable import make_trainable

    return make_trainable(spec, finished, split)


def store_split(client: Any, parent_id: str, task: Task) -> dict[str, Any] | None:
    """Keep the task's held-out split on the sweep's parent run (tasks that keep one)."""
    record = task.split_record()
    if record is not None:
        client.log_dict(parent_id, record, SPLIT_ARTIFACT)
    return record


def driver_figures(log_seconds: list[float]) -> dict[str, float]:
    """What the sweep cost its driver, for the parent run: CPU-seconds and peak resident
    memory of this process so far, Optuna's proposal time (the median, and the median of the
    last 10: TPE's cost grows with the study) and the 99th percentile of the time each
    epoch's metrics took to reach MLflow, in milliseconds."""
    import resource

    from ftray.sweep.optuna_search import SUGGEST_SECONDS

    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures = {
        "driver/cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "driver/peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux counts KiB
    }
    if SUGGEST_SECONDS:
        figures["driver/suggest_ms_p50"] = round(1000 * statistics.median(SUGGEST_SECONDS), 2)
        figures["driver/suggest_ms_at_end"] = round(
            1000 * statistics.median(SUGGEST_SECONDS[-10:]), 2
        )
    if log_seconds:
        ordered = sorted(log_seconds)
        figures["driver/mlflow_log_ms_p99"] = round(
            1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2
        )
    return figures


def build_tuner(
    spec: Spec,
    callback: RecordTrials,
    experiment_name: str,
    study_name: str,
    watch: PendingWatch,
    stopper: StorageGuard | None = None,
    split: dict[str, Any] | None = None,
) -> Any:
    """A fresh Tuner for the sweep; `watch` stops it when trials wait too long for resources."""
    from ray import tune
    from ray.tune.stopper import CombinedStopper

    assert spec.search is not None
    searcher = build_searcher(spec, study_name)
    stoppers = [s for s in (stopper, watch) if s is not None]
    if spec.search.budget is not None:
        searcher.budget_key = callback.parent_run_id
        stoppers.append(BudgetStopper(callback.parent_run_id))
    return tune.Tuner(
        make_trainable_for(spec, split=split),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=build_scheduler(spec),
            num_samples=spec.search.num_trials,
            max_concurrent_trials=spec.search.max_concurrent_trials,
            # A finished trial's worker runs the next trial: its process, imports (torch,
            # transformers, peft: seconds each time) and caches are kept. Tune starts a new
            # worker when the old one's trial has not let go within a couple of seconds.
            reuse_actors=True,
        ),
        run_config=run_config(
            spec,
            experiment_name,
            tune_storage_path(spec),
            [callback, watch],
            CombinedStopper(*stoppers) if len(stoppers) > 1 else stoppers[0],
        ),
    )


def run_config(
    spec: Spec, name: str, storage_path: str, callbacks: list[Any], stop: Any = None
) -> Any:
    """Tune's RunConfig of a sweep's experiment (the search's, or its confirmation's)."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    assert spec.search is not None
    return tune.RunConfig(
        name=name,
        storage_path=storage_path,
        # Tune's per-trial result files, without its TensorBoard logger (run_sweep turns
        # the default loggers off): TensorBoardX imports torch into the driver.
        callbacks=[*callbacks, CSVLoggerCallback(), JsonLoggerCallback()],
        stop=stop,
        # Two: a retried trial falls back to the older when the newer is corrupted.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
        verbose=0,
    )


def run_confirmation(
    spec: Spec,
    parent_id: str,
    storage_root: str,
    experiment_path: str,
    split: dict[str, Any] | None,
    configs: list[dict[str, Any]],
) -> Any:
    """The confirmation trials (`search.confirm`): each of `configs` once, as a Tune
    experiment beside the search's (`<its name>-confirm`), recorded under the same parent run.
    An interrupted confirmation runs again, whole, on --resume."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    assert spec.search is not None
    # Tune takes preset points only for keys its space has: each key with the values given.
    keys = list(dict.fromkeys(k for config in configs for k in config))
    values = {
        k: {json.dumps(c[k], sort_keys=True, default=str): c[k] for c in configs if k in c}
        for k in keys
    }
    space = {k: tune.choice(list(distinct.values())) for k, distinct in values.items()}
    tuner = tune.Tuner(
        make_trainable_for(spec, split=split),
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(points_to_evaluate=configs),
            num_samples=len(configs),
            max_concurrent_trials=spec.search.max_concurrent_trials,
            reuse_actors=True,
        ),
        run_config=run_config(
            spec,
            experiment_path.rsplit("/", 1)[1] + "-confirm",
            storage_root,
            [RecordTrials(parent_id, storage_root)],
        ),
    )
    with library_prints_to_debug():
        return tuner.fit()


def restore_tuner(
    spec: Spec,
    recorder: SweepRecorder,
    experiment_path: str,
    split: dict[str, Any] | None = None,
) -> Any:
    """The interrupted sweep's Tuner: unfinished and errored trials resume, finished ones stay.

    Tune restores the callback it saved with the experiment; that callback finds this
    driver's `recorder` by the parent run id it carries.
    """
    from ray import tune

    if not tune.Tuner.can_restore(experiment_path):
        raise RuntimeError(f"no Ray Tune state to resume at {experiment_path}")
    if spec.storage.optuna_url:
        from ftray.sweep.optuna_storage import remember_password

        remember_password(spec.storage.optuna_url)  # the saved searcher holds none
    return tune.Tuner.restore(
        experiment_path,
        make_trainable_for(spec, recorder.finished_results(), split),
        resume_unfinished=True,
        resume_errored=True,
    )


def error_summary(error: BaseException | None) -> str | None:
    """The last non-empty line of a trial's error (Ray wraps the trial's own exception)."""
    if error is None:
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def collect_outcomes(spec: Spec, grid: Any, recorder: SweepRecorder) -> list[TrialOutcome]:
    """Every trial, best first in the leaderboard's order (`ranking.rank_key`)."""
    assert spec.search is not None
    outcomes = []
    for result in grid:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or Path(result.path).name
        record = recorder.records.get(trial_id)
        if record is not None:
            status = record.status
            metrics |= recorder.meter.charge(record.spend.seconds)
        else:
            status = TrialStatus.FAILED if result.error else TrialStatus.KILLED
        outcomes.append(
            TrialOutcome(
                trial_id=trial_id,
                run_id=record.run_id if record else "",
                status=status,
                metrics={
                    k: float(v)
                    for k, v in metrics.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                },
                epochs=int(metrics.get("epoch", 0)),
                config=dict(result.config or {}),
                checkpoint=result.checkpoint,
                error=error_summary(result.error),
                details={k: v for k, v in metrics.items() if isinstance(v, str)},
            )
        )
    return ranked(outcomes, spec.search.goals, spec.search.selection)


def ended(outcomes: list[TrialOutcome]) -> int:
    """How many trials ran to an end (finished or failed): fewer than Tune was given means
    the run was interrupted."""
    return sum(o.status.finished or o.status is TrialStatus.FAILED for o in outcomes)


def prune_settings(spec: Spec) -> dict[str, Any] | None:
    """What ASHA stops trials on, with every default filled in, and its rungs' epochs (None
    with scheduler fifo)."""
    assert spec.search is not None
    search = spec.search
    if search.scheduler != "asha":
        return None
    return {
        **spec.stopping.model_dump(),
        "grace_period": search.prune.grace(asha_max_t(spec)),
        "reduction_factor": search.prune.reduction_factor,
        "max_t": asha_max_t(spec),
        "rungs": asha_rungs(spec),
    }


def record_search_settings(spec: Spec, client: Any, parent_id: str) -> None:
    """The search section on the parent run: params, and the objectives/select rule and
    what ASHA stops on as tags (the leaderboard reads these, whatever the spec says later)."""
    assert spec.search is not None
    search = spec.search
    params = safe_params(
        {
            f"search.{k}": v
            for k, v in search.model_dump(
                exclude={"space", "objectives", "select", "prune"}
            ).items()
            if v is not None
        }
    )
    prune = prune_settings(spec)
    if prune is not None:
        params |= safe_params({f"search.prune.{k}": v for k, v in prune.items() if k != "rungs"})
    params |= safe_params(
        {
            f"space.{k}": d.model_dump(by_alias=True, exclude_none=True)
            for k, d in search.space.items()
        }
    )
    log_params(client, parent_id, params)
    client.set_tag(parent_id, OBJECTIVES, json.dumps([g.model_dump() for g in search.goals]))
    if search.select is not None:
        client.set_tag(parent_id, SELECT, json.dumps(search.select.model_dump()))
    if prune is not None:
        client.set_tag(parent_id, PRUNE, json.dumps(prune))


def tag_pareto_front(spec: Spec, client: Any, outcomes: list[TrialOutcome]) -> None:
    """With several objectives: `ftray.pareto` = true | false on every trial's run."""
    assert spec.search is not None
    if len(spec.search.goals) < 2:
        return
    front = pareto_front(outcomes, spec.search.goals)
    for outcome in outcomes:
        if outcome.run_id:
            client.set_tag(outcome.run_id, PARETO, str(outcome.trial_id in front).lower())
    log.info(f"Pareto front of the completed trials: {', '.join(sorted(front)) or 'empty'}")


def sweep_summary(
    spec: Spec, outcomes: list[TrialOutcome], wall_seconds: float
) -> dict[str, float]:
    """The parent run's metrics: the best completed value of each objective under its own
    name (so MLflow's chart view compares sweeps), trial counts, epochs and wall time."""
    assert spec.search is not None
    summary: dict[str, float] = {}
    completed = [o for o in outcomes if o.status is TrialStatus.COMPLETED]
    for goal in spec.search.goals:
        values = [o.value(goal.metric) for o in completed]
        values = [v for v in values if not math.isnan(v)]
        if values:
            summary[goal.metric] = max(values) if goal.mode == "max" else min(values)
    for status in (TrialStatus.COMPLETED, TrialStatus.PRUNED, TrialStatus.FAILED):
        summary[f"trials_{status.value}"] = sum(o.status is status for o in outcomes)
    summary["epochs_trained"] = sum(o.epochs for o in outcomes)
    summary["wall_seconds"] = round(wall_seconds, 1)
    return summary


def spend_summary(
    spec: Spec, outcomes: list[TrialOutcome], recorder: SweepRecorder, summary: dict[str, float]
) -> dict[str, float]:
    """The sweep's GPU-hours (CPU-hours) and cost, in total, per outcome, and up to when the
    final best (`summary`'s value of the primary objective) first appeared."""
    assert spec.search is not None
    primary = spec.search.primary
    best = (
        (primary.metric, summary[primary.metric], primary.mode)
        if primary.metric in summary
        else None
    )
    spends = [
        (recorder.records[o.trial_id].phase or o.status.value, recorder.records[o.trial_id].spend)
        for o in outcomes
        if o.trial_id in recorder.records
    ]
    return sweep_spend(recorder.meter, spends, best)


def metric_histories(
    client: Any,
    outcomes: list[TrialOutcome],
    metrics: list[str],
    recorder: SweepRecorder | None = None,
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """trial id -> metric -> [(epoch, value), ...] as this driver logged them (`recorder`),
    else as MLflow recorded them: a thousand trials' histories read back from a tracking
    server took 30 s, one request per trial and metric."""
    histories: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for outcome in outcomes:
        if not outcome.run_id:
            continue
        record = recorder.records.get(outcome.trial_id) if recorder is not None else None
        histories[outcome.trial_id] = {}
        for metric in metrics:
            logged = record.metric_history(metric) if record is not None else None
            if logged is None:
                logged = sorted(
                    (m.step, m.value) for m in client.get_metric_history(outcome.run_id, metric)
                )
            histories[outcome.trial_id][metric] = logged
    return histories


def log_sweep_plots(
    spec: Spec,
    client: Any,
    parent_id: str,
    outcomes: list[TrialOutcome],
    recorder: SweepRecorder | None = None,
) -> None:
    """The sweep's plots (objective per epoch, history, importances, parallel coordinates,
    Pareto front) on the parent run."""
    import matplotlib.pyplot as plt

    from ftray.sweep.plots import plotted_metrics, sweep_figures

    assert spec.search is not None
    plotted = [g.metric for g in plotted_metrics(spec)]
    histories = metric_histories(client, outcomes, plotted, recorder)
    for name, figure in sweep_figures(spec, outcomes, histories):
        client.log_figure(parent_id, figure, f"plots/{name}.png")
        plt.close(figure)


def sweep_experiment(spec: Spec, client: Any, store: TrackingStore | None = None) -> str:
    """The id of the spec's experiment (created, marked as model training and with its
    artifacts beside a local store, when missing)."""
    store = store or find_store(None, spec)
    return open_experiment(client, store, spec.name, {EXPERIMENT_KIND: MODEL_TRAINING_KIND})


def open_parent_run(
    spec: Spec,
    task: Task,
    client: Any,
    store: TrackingStore,
    storage_root: str,
    step_of: StepOf | None = None,
    extra_tags: dict[str, str] | None = None,
) -> tuple[str, Any]:
    """(experiment id, the new parent run) of a new sweep keeping Tune's state under
    `storage_root`; a step's sweep is a child of its each-step run. `extra_tags` (the
    driver's lease) are set as the run is created."""
    experiment_id = sweep_experiment(spec, client, store)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # Two sweeps of one spec started in the same second (`--new` in a loop) must not share
    # Tune's experiment folder nor, on a shared Optuna database, the study.
    unique = f"{stamp}-{secrets.token_hex(2)}"
    tags = {ROLE: "sweep", SPEC_SHA256: spec.source.sha256}
    if step_of is None:
        experiment_name, run_name = f"{spec.name}-{unique}", f"sweep-{stamp}"
    else:
        experiment_name = f"{spec.name}-{step_of.step}-{unique}"
        run_name = f"{step_of.step}-{stamp}"
        tags |= {ROLE: STEP_ROLE, STEP: step_of.step, PARENT_RUN_ID: step_of.run_id}
    parent = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={
            **tags,
            DATASET_SHA256: task.dataset_sha256,
            TUNE_EXPERIMENT: f"{storage_root}/{experiment_name}",
            OPTUNA_STUDY: experiment_name,
            **(extra_tags or {}),
        },
    )
    client.log_text(parent.info.run_id, spec_document(spec), SPEC_ARTIFACT)
    return experiment_id, parent


def run_sweep(
    spec: Spec,
    task: Task,
    resume: bool = False,
    force: bool = False,
    step_of: StepOf | None = None,
    new: bool = False,
    release_ray: bool = False,
    prepared: CheckedBase | None = None,
) -> SweepResult:
    """Run (or resume) the sweep of a spec checked by `prepare_sweep` (with `step_of`: one
    step's sweep of an each-step run); every MLflow run it opens is closed whatever happens.
    A new sweep while the last one is unfinished needs `new` (UnfinishedSweep otherwise);
    `resume` refuses a spec that shapes trials differently from the recorded one
    (InputError). With `release_ray` (the last sweep this process runs), a Ray of this
    process's own starts stopping once the winner is registered, while the plots are made.
    `prepared` is what `checked_base` returned, when the caller ran it already."""
    set_tune_environment()
    import mlflow
    import optuna  # noqa: F401  (imported before its logger's level is set, or it resets it)

    quiet_library_logs()
    assert spec.search is not None
    label = spec.name if step_of is None else f"{spec.name} step {step_of.step}"
    checked = checked_base(spec, task, label) if prepared is None else prepared
    base = checked.path
    # The sweep's wall time counts the preparation, wherever it ran.
    started = time.monotonic() - checked.seconds
    phases = {"prepare": checked.seconds}
    store = find_store(None, spec)
    uri = store.uri
    mlflow.set_tracking_uri(uri)
    client = open_store(uri)  # made (a SQLite store's folder too) by one process at a time
    # Which sweep this is, and whether --resume may continue it: bad input before Ray starts.
    resumed = sweep_to_continue(spec, task, client, uri, resume, new, step_of)
    lease: Lease | None = None  # a step's sweep runs under its each-step run's lease
    lease_tags: dict[str, str] = {}
    if resumed is not None:
        spec = with_recorded_stopping(spec, resumed)
        if step_of is None:
            lease = Lease.take_over(client, resumed).start()
    elif step_of is None:
        lease, lease_tags = Lease.for_new_run(uri)

    try:  # a lease taken over for a resume is let go when the sweep cannot start
        mark = time.monotonic()
        init_ray()
        quiet_library_logs()  # again: joining a cluster lets Ray configure its loggers
        phases["ray_start"] = time.monotonic() - mark
        mark = time.monotonic()
        warned = bool(os.environ.get("RAY_ADDRESS")) and warn_if_unavailable(spec)
        if resumed is not None:
            parent = resumed
            experiment_id = parent.info.experiment_id
            storage_root = parent.data.tags[TUNE_EXPERIMENT].rsplit("/", 1)[0]
            warn_of_folders_ray_deletes(store, storage_root)
            guard = guard_shared_storage(spec, storage_root)
            client.update_run(parent.info.run_id, status="RUNNING")
        else:
            storage_root = tune_storage_path(spec).rstrip("/")
            warn_of_folders_ray_deletes(store, storage_root)
            guard = guard_shared_storage(spec, storage_root)
            experiment_id, parent = open_parent_run(
                spec, task, client, store, storage_root, step_of, lease_tags
            )
    except BaseException:
        if lease is not None and resumed is not None:
            lease.release(client)
        raise
    parent_id = parent.info.run_id
    if lease is not None and resumed is None:
        lease.start(parent_id)
    experiment_path = parent.data.tags[TUNE_EXPERIMENT]
    recorder = SweepRecorder(uri, experiment_id, parent_id, spec)
    status = "FAILED"
    search = spec.search
    budget: Budget | None = None
    try:
        if resume:
            orphans = recorder.adopt_existing_runs()
            log.info(
                f"resuming sweep {parent.info.run_name} from {experiment_path}: "
                f"{recorder.finished_count()} trials finished, {orphans} orphaned run(s) marked KILLED"
            )
            split = reuse_stored_split(client, parent_id, task)
            tuner = restore_tuner(spec, recorder, experiment_path, split)
        else:
            record_search_settings(spec, client, parent_id)
            split = store_split(client, parent_id, task)
            callback = RecordTrials(parent_id, storage_root)
            watch = PendingWatch(
                experiment_path, search.pending_timeout, trial_resources(spec), warned
            )
            tuner = build_tuner(
                spec,
                callback,
                experiment_path.rsplit("/", 1)[1],
                parent.data.tags[OPTUNA_STUDY],
                watch,
                guard,
                split,
            )
        prune = prune_settings(spec)
        stops = describe_pruning(prune) if prune else "fifo (no trial stopped early)"
        several = (
            f"; objectives {', '.join(str(g) for g in search.goals)}"
            if len(search.goals) > 1
            else ""
        )
        log.info(
            f"sweep {label}: {search.num_trials} trials, {search.max_concurrent_trials} at a "
            f"time, {search.primary}{several}; {stops}; MLflow at {uri}"
        )
        # Opening the store (creating its tables the first time), the parent run, the Tuner.
        phases["tracking_setup"] = time.monotonic() - mark
        mark = time.monotonic()
        from ftray.sweep.optuna_search import SUGGEST_SECONDS

        SUGGEST_SECONDS.clear()
        # The wall time an earlier driver of this sweep recorded.
        earlier = parent.data.metrics.get("wall_seconds", 0.0) if resume else 0.0
        if search.budget is not None:
            budget = Budget(
                search.budget,
                recorder,
                spec.train.epochs,
                time.time() - earlier - phases["prepare"],
            )
        with library_prints_to_debug():
            grid = tuner.fit()
        recorder.flush()  # the trials' runs as complete as Tune's results, before reading them
        phases["trials"] = time.monotonic() - mark
        blind = StorageGuard.problem_for(storage_root)
        if blind:
            raise InputError([storage_problem(spec, blind)])
        stalled = PendingWatch.finding_for(experiment_path)
        if stalled:
            raise PendingTimeout(stalled)
        outcomes = collect_outcomes(spec, grid, recorder)
        stopped_by_budget = budget is not None and (budget.declined > 0 or budget.spent_out)
        if ended(outcomes) < search.num_trials and not stopped_by_budget:
            status = "KILLED"
            raise SweepInterrupted(experiment_path)
        confirmed: TrialOutcome | None = None
        if search.confirm is not None and not stopped_by_budget:
            mark = time.monotonic()
            chosen = candidates(spec, outcomes)
            configs = confirmation_configs(spec, chosen)
            log.info(
                f"confirming the {len(chosen)} best configuration(s) with "
                f"{search.confirm.seeds} new seed(s) each: {len(configs)} trials"
            )
            recorder.phase = PHASE_CONFIRM
            confirm_grid = run_confirmation(
                spec, parent_id, storage_root, experiment_path, split, configs
            )
            recorder.flush()
            extra = collect_outcomes(spec, confirm_grid, recorder)
            if ended(extra) < len(configs):
                status = "KILLED"
                raise SweepInterrupted(experiment_path)
            confirmed = confirmed_winner(spec, groups_of(chosen, extra))
            outcomes = outcomes + extra
            phases["confirm"] = time.monotonic() - mark
        tag_pareto_front(spec, client, outcomes)
        summary = sweep_summary(spec, outcomes, earlier + time.monotonic() - started)
        summary |= spend_summary(spec, outcomes, recorder, summary)
        if budget is not None:
            summary |= budget.summary(search.num_trials, len(outcomes))
            log.info(
                f"budget {budget.spec}: {summary['budget_spent']:.3g} spent; "
                f"{len(outcomes)} of {search.num_trials} trials started"
                + (f", {summary['trials_not_started']:g} not started" if budget.declined else "")
                + ("; the running trials were stopped when it ran out" if budget.spent_out else "")
            )
        log_metrics(client, parent_id, summary, step=0)
        registration, reason = None, None
        if confirmed is not None:
            winner: TrialOutcome | None = confirmed
            client.set_tag(parent_id, CONFIRMED, confirmed.trial_id)
            shown = search.selection.metric
            log.info(
                f"confirmed: trial {confirmed.trial_id}'s configuration, mean {shown} "
                f"{confirmed.metrics.get(shown, math.nan):.4g} (sd "
                f"{confirmed.metrics.get(shown + '_sd', math.nan):.2g}) over "
                f"{confirmed.metrics.get(shown + '_seeds', 0):g} trials"
            )
        else:
            winner = choose_winner(outcomes, search.goals, search.selection)
        mark = time.monotonic()
        if winner is not None and not spec.registers:
            why = "simulated trials" if spec.model.simulated else "tracking.register is false"
            reason = f"nothing registered ({why}); the best trial is {winner.trial_id}"
        elif winner is not None:
            # The trials trained under the spec the sweep recorded (a resume may differ only
            # in fields that shape no trial).
            registration = register_winner(
                spec,
                client,
                parent_id,
                winner,
                base,
                task,
                force=force,
                spec_sha256=parent.data.tags.get(SPEC_SHA256),
            )
        elif any(o.status.finished for o in outcomes) and search.selection.where:
            reason = (
                f"no finished trial meets search.select ({search.selection}); nothing registered"
            )
            client.set_tag(parent_id, SELECTION, "none")
            log.warning(reason)
        else:
            log.warning("no trial finished with a checkpoint; nothing registered")
        phases["registration"] = time.monotonic() - mark
        if release_ray:
            release_ray_in_background()
        mark = time.monotonic()
        log_sweep_plots(spec, client, parent_id, outcomes, recorder)
        phases["plots"] = time.monotonic() - mark
        timings = {f"time/{k}": round(v, 2) for k, v in phases.items()}
        log_metrics(client, parent_id, {**timings, **driver_figures(recorder.log_seconds)}, 0)
        result = SweepResult(parent_id, grid.experiment_path, outcomes, registration, uri, reason)
        status = "FAILED" if result.all_failed else "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if guard is not None:
            guard.close()
        if budget is not None:
            budget.release()
        recorder.close_open_runs("KILLED" if status != "FAILED" else "FAILED")
        recorder.release()
        if lease is None or lease.lost is None:  # else the sweep is another driver's now
            client.set_terminated(parent_id, status)
        if lease is not None:
            lease.release(client)
