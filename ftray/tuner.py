"""`ftray sweep`: Ray Tune runs the trials, Optuna proposes configurations, ASHA stops
poor trials, and the driver records everything in MLflow and registers the winner."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftray.errors import InputError, Problem
from ftray.leaderboard import rank_key
from ftray.registry import Lineage, Registration, register_adapter
from ftray.spec import TINY_MODEL, Distribution, Spec
from ftray.tasks import Task
from ftray.tracking import (
    FINISHED_STATUSES,
    ROLE_TAG,
    MlflowSweepCallback,
    progress,
    safe_params,
    tracking_uri,
)
from ftray.train import prepare_base

RESULTS_DIR = "ray_results"


def optuna_distribution(distribution: Distribution) -> Any:
    """The Optuna distribution for one search dimension."""
    import optuna

    kind, values = distribution.kind, distribution.values()
    if kind == "choice":
        return optuna.distributions.CategoricalDistribution(values)
    if kind == "uniform":
        return optuna.distributions.FloatDistribution(values[0], values[1])
    if kind == "loguniform":
        return optuna.distributions.FloatDistribution(values[0], values[1], log=True)
    return optuna.distributions.IntDistribution(values[0], values[1])


def optuna_space(spec: Spec) -> dict[str, Any]:
    """The spec's search space as Optuna distributions, keyed by dotted path."""
    assert spec.search is not None
    return {path: optuna_distribution(d) for path, d in spec.search.space.items()}


def build_searcher(spec: Spec, study_name: str | None = None) -> Any:
    """OptunaSearch (TPE seeded by train.seed) over the spec's space.

    With `storage.optuna_url` the study lives in that database under `study_name`, so it
    outlives the driver and can be read afterwards.
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    assert spec.search is not None
    storage = (
        optuna.storages.RDBStorage(spec.storage.optuna_url) if spec.storage.optuna_url else None
    )
    return OptunaSearch(
        space=optuna_space(spec),
        metric=spec.search.objective,
        mode=spec.search.mode,
        sampler=optuna.samplers.TPESampler(seed=spec.train.seed),
        storage=storage,
        study_name=study_name if storage is not None else None,
    )


def max_epochs(spec: Spec) -> int:
    """The most epochs any trial can run (train.epochs may itself be searched)."""
    assert spec.search is not None
    searched = spec.search.space.get("train.epochs")
    return int(max(searched.values())) if searched else spec.train.epochs


def build_scheduler(spec: Spec) -> Any:
    """ASHA on the objective with the epoch as time, or FIFO (no early stopping)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    assert spec.search is not None
    if spec.search.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",
        metric=spec.search.objective,
        mode=spec.search.mode,
        max_t=max_epochs(spec),
        grace_period=1,
        reduction_factor=2,
    )


@dataclass
class TrialOutcome:
    """One finished trial as the leaderboard and registry see it."""

    trial_id: str
    run_id: str
    status: str
    value: float
    epochs: int
    config: dict[str, Any]
    checkpoint: Any
    error: str | None = None


@dataclass
class SweepResult:
    """What a sweep produced."""

    parent_run_id: str
    experiment_path: str
    outcomes: list[TrialOutcome]
    registration: Registration | None
    tracking_uri: str


def init_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # A Ray of our own serves this machine only: keep it on loopback.
        ray.init(
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
        )


class NothingToResume(Exception):
    """`--resume` found the last sweep already finished."""


def tune_storage_path(spec: Spec) -> str:
    """Ray Tune's storage_path: `storage.tune_path`, else ./ray_results."""
    return spec.storage.tune_path or str(Path(RESULTS_DIR).resolve())


def storage_problem(spec: Spec, message: str) -> Problem:
    """A problem with the storage folder, at `storage.tune_path`'s line when the spec sets it."""
    if ("storage", "tune_path") in spec.source.lines or any(
        o.startswith("storage.tune_path=") for o in spec.source.overrides
    ):
        return spec.source.problem(("storage", "tune_path"), message)
    return Problem(
        str(spec.source.path),
        None,
        f"{message} (storage.tune_path is not set, so Tune writes to ./ray_results on the "
        "driver's machine; add a storage: section)",
    )


def guard_shared_storage(spec: Spec, storage_root: str) -> Any:
    """Check that a local `storage_root` is the same folder on every node of the cluster.

    InputError (exit 2) when a node cannot see it. Returns the Tune stopper that checks
    nodes joining later, or None when there is nothing to guard (an object store URI, or
    a Ray of this process's own, which has one node).
    """
    from ftray.shared_storage import (
        StorageGuard,
        alive_nodes,
        check_visible_from_every_node,
        is_local_path,
    )

    if not is_local_path(storage_root):
        return None
    nodes = alive_nodes()
    if len(nodes) > 1:
        try:
            blind, asked = check_visible_from_every_node(storage_root)
        except OSError as exc:
            raise InputError(
                [storage_problem(spec, f"cannot write to storage.tune_path {storage_root}: {exc}")]
            ) from None
        if blind:
            raise InputError([storage_problem(spec, message) for message in blind])
        progress(f"storage {storage_root} is visible from all {asked} nodes")
    elif not os.environ.get("RAY_ADDRESS"):
        return None
    else:
        progress(
            f"warning: the Ray cluster has one node now and {storage_root} is a local folder: "
            "nodes that join later (autoscaling) are checked as they join, and the sweep stops "
            "if one of them cannot see it"
        )
    return StorageGuard(storage_root, set(nodes))


def build_tuner(
    spec: Spec,
    callback: MlflowSweepCallback,
    experiment_name: str,
    study_name: str,
    stopper: Any = None,
) -> Any:
    """A fresh Tuner for the sweep."""
    from ray import tune

    assert spec.search is not None
    return tune.Tuner(
        make_trainable_for(spec),
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(spec, study_name),
            scheduler=build_scheduler(spec),
            num_samples=spec.search.num_trials,
            max_concurrent_trials=spec.search.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=experiment_name,
            storage_path=tune_storage_path(spec),
            callbacks=[callback],
            stop=stopper,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        ),
    )


def restore_tuner(spec: Spec, callback: MlflowSweepCallback, experiment_path: str) -> Any:
    """The interrupted sweep's Tuner: unfinished and errored trials resume, finished ones stay."""
    from ray import tune

    if not tune.Tuner.can_restore(experiment_path):
        raise RuntimeError(f"no Ray Tune state to resume at {experiment_path}")
    tuner = tune.Tuner.restore(
        experiment_path,
        make_trainable_for(spec, callback.finished_results()),
        resume_unfinished=True,
        resume_errored=True,
    )
    # Tune restores the run config it pickled, callbacks included; swap in this driver's
    # callback, which holds the live MLflow client and the adopted child runs.
    tuner._local_tuner.get_run_config().callbacks = [callback]
    return tuner


def run_sweep(spec: Spec, task: Task, resume: bool = False, force: bool = False) -> SweepResult:
    """Run (or resume) the sweep of a spec checked by `prepare_sweep`; every MLflow run it
    opens is closed whatever happens."""
    # Trials checkpoint every epoch; Tune's advice to checkpoint less is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Save Tune's experiment state often (default: at most every 10 s), so a killed driver
    # loses little: trials it had just started but never saved are replaced on resume.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    import mlflow
    from mlflow import MlflowClient

    from ftray.leaderboard import latest_sweep_run
    from ftray.shared_storage import StorageGuard

    assert spec.search is not None
    progress(f"preparing data and base model for {spec.name}")
    base = prepare_base(spec, task)  # the tiny model is built once, here, not per trial

    uri = tracking_uri(spec)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    init_ray()
    if resume:
        parent = latest_sweep_run(client, spec)
        if parent is None:
            raise InputError.at(
                spec.source.path,
                None,
                f"no earlier sweep of '{spec.name}' at {uri} to resume; run without --resume",
            )
        if parent.info.status == "FINISHED":
            raise NothingToResume(parent.info.run_id)
        experiment_id, parent_id = parent.info.experiment_id, parent.info.run_id
        experiment_path = parent.data.tags["ftray.tune_experiment"]
        storage_root = experiment_path.rsplit("/", 1)[0]
        guard = guard_shared_storage(spec, storage_root)
        client.update_run(parent_id, status="RUNNING")
        callback = MlflowSweepCallback(uri, experiment_id, parent_id, spec)
        callback.storage_root = storage_root
        orphans = callback.adopt_existing_runs()
        progress(
            f"resuming sweep {parent.info.run_name} from {experiment_path}: "
            f"{callback.finished_count()} trials finished, {orphans} orphaned run(s) marked KILLED"
        )
    else:
        experiment = client.get_experiment_by_name(spec.name)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(spec.name)
        )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        experiment_name = f"{spec.name}-{stamp}"
        storage_root = tune_storage_path(spec).rstrip("/")
        guard = guard_shared_storage(spec, storage_root)
        experiment_path = f"{storage_root}/{experiment_name}"
        parent = client.create_run(
            experiment_id,
            run_name=f"sweep-{stamp}",
            tags={
                ROLE_TAG: "sweep",
                "ftray.spec_sha256": spec.source.sha256,
                "ftray.objective": spec.search.objective,
                "ftray.tune_experiment": experiment_path,
                "ftray.optuna_study": experiment_name,
            },
        )
        parent_id = parent.info.run_id
        callback = MlflowSweepCallback(uri, experiment_id, parent_id, spec)
        callback.storage_root = storage_root
    status = "FAILED"
    try:
        if not resume:
            from mlflow.entities import Param

            params = safe_params(
                {f"search.{k}": v for k, v in spec.search.model_dump(exclude={"space"}).items()}
            )
            params |= safe_params(
                {
                    f"space.{k}": d.model_dump(by_alias=True, exclude_none=True)
                    for k, d in spec.search.space.items()
                }
            )
            client.log_batch(parent_id, params=[Param(k, v) for k, v in params.items()])
        if resume:
            tuner = restore_tuner(spec, callback, experiment_path)
        else:
            tuner = build_tuner(
                spec,
                callback,
                experiment_path.rsplit("/", 1)[1],
                parent.data.tags["ftray.optuna_study"],
                guard,
            )
        progress(
            f"sweep {spec.name}: {spec.search.num_trials} trials, {spec.search.max_concurrent_trials} at a time, "
            f"{spec.search.scheduler} on {spec.search.objective} ({spec.search.mode}); MLflow at {uri}"
        )
        grid = tuner.fit()
        blind = StorageGuard.problem_for(storage_root)
        if blind:
            raise InputError([storage_problem(spec, blind)])
        outcomes = collect_outcomes(spec, grid, callback)
        terminal = [o for o in outcomes if o.status in (*FINISHED_STATUSES, "failed")]
        if len(terminal) < spec.search.num_trials:
            status = "KILLED"
            raise SweepInterrupted(experiment_path)
        registration = register_best(
            spec, client, parent_id, outcomes, base, task.dataset_sha256, force=force
        )
        log_sweep_plots(spec, client, parent_id, outcomes)
        status = "FINISHED"
        return SweepResult(parent_id, grid.experiment_path, outcomes, registration, uri)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if guard is not None:
            guard.close()
        callback.close_open_runs("KILLED" if status != "FAILED" else "FAILED")
        client.set_terminated(parent_id, status)


class SweepInterrupted(Exception):
    """The sweep was stopped (SIGINT, `ray job stop`) before every trial finished; Tune saved its state."""


def make_trainable_for(spec: Spec, finished: dict[str, dict[str, Any]] | None = None) -> Any:
    """The Tune trainable (imported late: it pulls in the training stack)."""
    from ftray.trainable import make_trainable

    return make_trainable(spec, finished)


def collect_outcomes(spec: Spec, grid: Any, callback: MlflowSweepCallback) -> list[TrialOutcome]:
    """Every trial, best first by its last reported objective."""
    assert spec.search is not None
    outcomes = []
    for result in grid:
        trial_id = result.metrics.get("trial_id") if result.metrics else None
        trial_id = trial_id or Path(result.path).name
        record = callback.records.get(trial_id)
        value = float((result.metrics or {}).get(spec.search.objective, float("nan")))
        outcomes.append(
            TrialOutcome(
                trial_id=trial_id,
                run_id=record.run_id if record else "",
                status=record.status if record else ("failed" if result.error else "not started"),
                value=value,
                epochs=int((result.metrics or {}).get("epoch", 0)),
                config=dict(result.config or {}),
                checkpoint=result.checkpoint,
                error=error_summary(result.error),
            )
        )
    outcomes.sort(key=lambda o: rank_key(o.status, o.value, spec.search.mode))
    return outcomes


def error_summary(error: BaseException | None) -> str | None:
    """The last non-empty line of a trial's error (Ray wraps the trial's own exception)."""
    if error is None:
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def register_best(
    spec: Spec,
    client: Any,
    parent_id: str,
    outcomes: list[TrialOutcome],
    base: str,
    dataset_sha: str,
    force: bool = False,
) -> Registration | None:
    """Register the best trial's adapter; None when no trial produced one."""
    assert spec.search is not None
    best = next(
        (
            o
            for o in outcomes
            if o.status != "failed" and o.checkpoint is not None and not math.isnan(o.value)
        ),
        None,
    )
    if best is None:
        progress("no trial finished with a checkpoint; nothing registered")
        return None
    import shutil
    import tempfile

    # The tiny model's folder is named by its content hash, which pins it exactly.
    revision = f"tiny-{Path(base).name}" if spec.model.base == TINY_MODEL else "unpinned"
    lineage = Lineage(
        base_model=spec.model.base,
        base_revision=revision,
        dataset_sha256=dataset_sha,
        spec_sha256=spec.source.sha256,
        objective=spec.search.objective,
        objective_value=best.value,
        mode=spec.search.mode,
        trial_id=best.trial_id,
        sweep_run_id=parent_id,
    )
    staging = Path(tempfile.mkdtemp(prefix="ftray-adapter-"))
    try:
        with best.checkpoint.as_directory() as folder:
            shutil.copytree(folder, staging / "adapter")
        (staging / "adapter" / "samples.jsonl").unlink(missing_ok=True)
        registration = register_adapter(
            client,
            spec.registered_model_name,
            best.run_id,
            staging / "adapter",
            lineage,
            force=force,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for key, value in lineage.tags().items():
        client.set_tag(parent_id, key, value)
    client.set_tag(parent_id, "ftray.registered_version", registration.version)
    return registration


def log_sweep_plots(spec: Spec, client: Any, parent_id: str, outcomes: list[TrialOutcome]) -> None:
    """Optimisation history, parameter importances and parallel coordinates on the parent run."""
    import matplotlib.pyplot as plt

    from ftray.plots import sweep_figures

    for name, figure in sweep_figures(spec, outcomes):
        client.log_figure(parent_id, figure, f"plots/{name}.png")
        plt.close(figure)
