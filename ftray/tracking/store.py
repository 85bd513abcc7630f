"""The MLflow tracking store of a spec, and the small writes and reads every layer shares."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftray.config.files import resolved
from ftray.config.spec import Spec, flatten
from ftray.config.tracking_uri import SQLITE_PREFIX, absolute_store_uri, local_store_path
from ftray.errors import InputError, Problem
from ftray.log import get_logger
from ftray.redaction import MASK, looks_secret, mask_url_passwords, redact
from ftray.tracking.tags import EACH_STEP_ROLE, PARENT_RUN_ID, ROLE, STEP, STEP_ROLE

DEFAULT_STORE_FILE = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"
FLAG, ENVIRONMENT, SPEC_URI, DEFAULT = "--tracking-uri", "MLFLOW_TRACKING_URI", "tracking.uri", ""
log = get_logger()


@dataclass(frozen=True)
class TrackingStore:
    """An MLflow tracking store, and what named it (so that messages say where ftray looked).

    A local store's URI is absolute: `--tracking-uri` and MLFLOW_TRACKING_URI are relative
    to the current folder, the spec's `tracking.uri` to the spec's folder.
    """

    uri: str
    named_by: str
    """FLAG, ENVIRONMENT, SPEC_URI or DEFAULT."""
    spec: Spec | None = None

    @property
    def path(self) -> Path | None:
        """A local store's database file or file-store folder; None for a server."""
        return local_store_path(self.uri)

    def exists(self) -> bool:
        """Whether a local store's file or folder is there (a server is taken to be)."""
        return self.path is None or self.path.exists()

    def artifact_location(self, experiment: str) -> str | None:
        """Where a new experiment keeps its artifacts: `mlartifacts/<experiment>` beside a
        SQLite database, which MLflow would otherwise put in ./mlruns of whatever folder the
        process runs in (under `ray job submit`, the job's package, which Ray deletes). None
        keeps the store's own: a file store's folder, a tracking server's artifact root."""
        if self.path is None or not self.uri.startswith("sqlite:"):
            return None
        return (self.path.parent / ARTIFACTS_FOLDER / experiment).as_uri()

    def lasting_folder(self) -> Path:
        """The folder of a local store, where results beside it outlive the process; the
        user's home for a tracking server or a store inside a Ray job's working directory."""
        path = self.path
        if path is None or ray_job_folder(path) is not None:
            return Path.home()
        return path.parent

    def how_found(self) -> str:
        """Which setting named the store, and what a relative path in it is relative to."""
        local = self.path is not None
        if self.named_by in (FLAG, ENVIRONMENT):
            return f"given by {self.named_by}" + (", relative to the current folder" * local)
        if self.named_by == SPEC_URI:
            return "the spec's tracking.uri" + (", relative to the spec's folder" * local)
        if self.spec is not None:
            return (
                f"the default {DEFAULT_STORE_FILE} beside the spec: it sets no tracking.uri, "
                "and neither --tracking-uri nor MLFLOW_TRACKING_URI is given"
            )
        return (
            f"the default {DEFAULT_STORE_FILE} in the current folder: no --tracking-uri, "
            "MLFLOW_TRACKING_URI or --spec names another"
        )


def find_store(flag: str | None = None, spec: Spec | None = None) -> TrackingStore:
    """The store a command reads and writes: its `--tracking-uri`, else MLFLOW_TRACKING_URI
    (both relative to the current folder), else the spec's tracking.uri (relative to the
    spec's folder), else mlflow.db beside the spec (in the current folder without one)."""
    cwd = Path.cwd()
    if flag:
        return TrackingStore(absolute_store_uri(flag, cwd), FLAG, spec)
    environment = os.environ.get("MLFLOW_TRACKING_URI")
    if environment:
        return TrackingStore(absolute_store_uri(environment, cwd), ENVIRONMENT, spec)
    folder = resolved(spec.source.path).parent if spec is not None else cwd
    if spec is not None and spec.tracking.uri:
        return TrackingStore(absolute_store_uri(spec.tracking.uri, folder), SPEC_URI, spec)
    return TrackingStore(f"{SQLITE_PREFIX}{resolved(folder / DEFAULT_STORE_FILE)}", DEFAULT, spec)


def existing_store(flag: str | None = None, spec: Spec | None = None) -> TrackingStore:
    """`find_store`, refusing (InputError, exit 2) a local store that is not there, which
    MLflow would otherwise create empty; the error says where ftray looked."""
    store = find_store(flag, spec)
    if store.exists():
        return store
    message = (
        f"no MLflow store at {store.path} ({store.how_found()}); nothing was created. Run "
        "ftray sweep first, or name the store with --tracking-uri or MLFLOW_TRACKING_URI"
    )
    if store.spec is not None and store.named_by == SPEC_URI:
        raise InputError([store.spec.source.problem(("tracking", "uri"), message)])
    if store.spec is not None and store.named_by == DEFAULT:
        raise InputError.at(store.spec.source.path, None, message)
    raise InputError([Problem(store.named_by or str(Path.cwd()), None, message)])


def tracking_uri(spec: Spec) -> str:
    """The URI of the spec's store (`find_store` without a flag)."""
    return find_store(None, spec).uri


RAY_RUNTIME_RESOURCES = "runtime_resources"


def ray_job_folder(path: Path) -> Path | None:
    """The Ray job working directory holding `path`, or None.

    `ray job submit --working-dir` unpacks the job's files into
    `<Ray temp>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>/` and runs the
    job there; Ray deletes that folder when it trims its cache or the session's temp
    folder goes, so nothing meant to last may be written inside it.
    """
    parts = path.parts
    if RAY_RUNTIME_RESOURCES not in parts:
        return None
    return Path(*parts[: parts.index(RAY_RUNTIME_RESOURCES) + 3])


def store_in_ray_job_warning(store: TrackingStore) -> str | None:
    """A warning when a local store lies inside a Ray job's working directory."""
    folder = ray_job_folder(store.path) if store.path is not None else None
    if folder is None:
        return None
    return (
        f"the MLflow store {store.path} ({store.how_found()}) lies inside the Ray job's "
        f"working directory {folder}, which Ray deletes with the job's files: the runs and "
        "the registered versions would go with it. Give the job an absolute "
        "MLFLOW_TRACKING_URI outside it (a runtime_env env_var) or a tracking server"
    )


def open_experiment(client: Any, store: TrackingStore, name: str, tags: dict[str, str]) -> str:
    """The id of the experiment `name`, created with `tags` and its artifacts beside a local
    store when new. An existing one whose artifacts lie inside a Ray job's working
    directory is used as it is, with a warning that says how to move on."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(
            name, artifact_location=store.artifact_location(name), tags=tags
        )
    for key, value in tags.items():
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    location = local_store_path(experiment.artifact_location)
    folder = ray_job_folder(location) if location is not None else None
    if folder is not None:
        fresh_uri = store.artifact_location(name)
        fresh = local_store_path(fresh_uri) if fresh_uri else "the store's artifact root"
        log.warning(
            f"experiment '{name}' (id {experiment.experiment_id}) keeps its artifacts in "
            f"{location}, inside the Ray job working directory {folder}, which Ray deletes "
            "with the job's files: this sweep's adapters, samples and plots would be lost. "
            "MLflow cannot move an experiment's artifacts; rename this one (mlflow "
            f"experiments rename --experiment-id {experiment.experiment_id} --new-name "
            f"{name}-old, with MLFLOW_TRACKING_URI={mask_url_passwords(store.uri)}) and the "
            f"next sweep creates '{name}' with its artifacts at {fresh}"
        )
    return experiment.experiment_id


def safe_params(values: dict[str, Any]) -> dict[str, str]:
    """Parameters fit for logging: values as strings, `***` for a key that names a secret,
    URL passwords masked."""
    return {
        k: MASK if looks_secret(k) else mask_url_passwords(str(v))[:6000] for k, v in values.items()
    }


def spec_document(spec: Spec) -> str:
    """The resolved spec (after --set, paths absolute) as YAML, secrets masked."""
    import yaml

    dumped = redact(spec.model_dump(by_alias=True, mode="json", exclude_none=True))
    return yaml.safe_dump(dumped, sort_keys=False, allow_unicode=True)


def trial_params(spec: Spec, config: dict[str, Any]) -> dict[str, str]:
    """The trial's effective flattened config."""
    return safe_params(flatten(spec.with_values(config)))


def log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    """Log parameters in batches MLflow accepts."""
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 90):
        client.log_batch(run_id, params=items[start : start + 90])


def log_metrics(
    client: Any, run_id: str, metrics: dict[str, Any], step: int, timestamp: int | None = None
) -> None:
    """Log numeric metrics at `step` in one batch, stamped `timestamp` (ms; default now)."""
    from mlflow.entities import Metric

    now = timestamp if timestamp is not None else int(time.time() * 1000)
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


def latest_sweep_run(client: Any, spec: Spec) -> Any | None:
    """The most recent parent run of the spec's experiment (a sweep, or an each-step run
    whose step sweeps are its children), or None."""
    experiment = client.get_experiment_by_name(spec.name)
    if experiment is None:
        return None
    latest = [
        run
        for role in ("sweep", EACH_STEP_ROLE)
        for run in client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{ROLE}` = '{role}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    ]
    return max(latest, key=lambda run: run.info.start_time, default=None)


def step_sweep_run(client: Any, each_step_run_id: str, step: str) -> Any | None:
    """The latest sweep of `step` under the each-step run `each_step_run_id`, or None."""
    parent = client.get_run(each_step_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=(
            f"tags.`{PARENT_RUN_ID}` = '{each_step_run_id}' and tags.`{ROLE}` = '{STEP_ROLE}' "
            f"and tags.`{STEP}` = '{step}'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def child_runs(client: Any, parent: Any) -> list[Any]:
    """Every child run of the parent run `parent`."""
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_RUN_ID}` = '{parent.info.run_id}'",
        max_results=5000,
    )
