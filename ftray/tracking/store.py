"""The MLflow tracking store of a spec, and the small writes and reads every layer shares."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ftray.config.spec import Spec, flatten
from ftray.redaction import MASK, looks_secret, mask_url_passwords, redact
from ftray.tracking.tags import EACH_STEP_ROLE, PARENT_RUN_ID, ROLE, STEP, STEP_ROLE

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri(spec: Spec) -> str:
    """MLFLOW_TRACKING_URI, else the spec's tracking.uri, else sqlite:///mlflow.db."""
    return store_uri(spec.tracking.uri)


def store_uri(given: str | None = None) -> str:
    """For commands without a spec (`promote`, `export`): MLFLOW_TRACKING_URI, else the URI
    `given` by the spec, else sqlite:///mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or given or DEFAULT_TRACKING_URI


def command_tracking_uri(flag: str | None, spec: Spec | None = None) -> str:
    """The store a command reads and writes: its `--tracking-uri`, else MLFLOW_TRACKING_URI,
    else the `spec`'s tracking.uri, else sqlite:///mlflow.db."""
    return flag or store_uri(spec.tracking.uri if spec is not None else None)


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


def log_metrics(client: Any, run_id: str, metrics: dict[str, Any], step: int) -> None:
    """Log numeric metrics at `step` in one batch."""
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
