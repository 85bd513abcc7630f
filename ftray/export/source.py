"""What an export starts from: a registered version (`models:/NAME@ALIAS`, `models:/NAME/N`)
or a trial run's adapter (`runs:/ID/adapter`), fetched from MLflow alone.

Everything is found the way the registered MLflow Model finds it: the adapter and a bundled
`tiny` base inside the logged model, a Hub base by id and pinned revision in the local
Hugging Face cache. A version or run ftray did not register (no lineage) is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftray.errors import InputError
from ftray.tracking.tags import LINEAGE_PREFIX

_MODELS = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")
_RUNS = re.compile(r"^runs:/(?P<run>[0-9a-f]+)/adapter/?$")
LINEAGE_FILE = "lineage.json"
LINEAGE_FIELDS = (
    "base_model",
    "base_revision",
    "dataset_sha256",
    "heldout_fingerprint",
    "spec_sha256",
    "objective",
    "objective_value",
    "mode",
    "trial_id",
    "sweep_run_id",
)


@dataclass(frozen=True)
class ExportSource:
    """A registered adapter fetched to local folders, with where it came from."""

    model_uri: str
    run_id: str
    adapter_dir: Path
    base: str
    """A local folder (the bundled `tiny` base) or a Hugging Face id."""
    base_revision: str | None
    lineage: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    registered_name: str | None = None
    registered_version: str | None = None
    load_in_4bit: bool = True
    task: str | None = None


def _bad(model_uri: str, message: str) -> InputError:
    return InputError.at(model_uri, None, message)


def parse_model_uri(model_uri: str) -> dict[str, str]:
    """The parts of a supported URI; bad input for anything else."""
    for pattern in (_MODELS, _RUNS):
        match = pattern.match(model_uri)
        if match:
            return {k: v for k, v in match.groupdict().items() if v is not None}
    raise _bad(
        model_uri,
        "not a model URI ftray exports: use models:/NAME@ALIAS (e.g. models:/trigger-tiny@champion), "
        "models:/NAME/VERSION or runs:/RUN_ID/adapter",
    )


def _lineage_from_tags(tags: dict[str, str]) -> dict[str, str]:
    return {
        key: tags[f"{LINEAGE_PREFIX}{key}"]
        for key in LINEAGE_FIELDS
        if f"{LINEAGE_PREFIX}{key}" in tags
    }


def _registered_version(client: Any, model_uri: str, parts: dict[str, str]) -> Any:
    from mlflow.exceptions import MlflowException

    name = parts["name"]
    try:
        if "alias" in parts:
            return client.get_model_version_by_alias(name, parts["alias"])
        return client.get_model_version(name, parts["version"])
    except MlflowException:
        what = f"alias '{parts['alias']}'" if "alias" in parts else f"version {parts['version']}"
        known = _known_versions(client, name)
        raise _bad(
            model_uri,
            f"the registry has no {what} of '{name}'"
            + (f" (it has {known})" if known else " (no such registered model)"),
        ) from None


def _known_versions(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return ""
    numbers = sorted(int(v.version) for v in versions)
    aliases = sorted((model.aliases or {}).items())
    text = "versions " + ", ".join(map(str, numbers)) if numbers else "no versions"
    if aliases:
        text += "; aliases " + ", ".join(f"{a} -> {v}" for a, v in aliases)
    return text


def _last_metrics(client: Any, run_id: str) -> dict[str, float]:
    return {k: float(v) for k, v in client.get_run(run_id).data.metrics.items()}


def fetch_source(client: Any, model_uri: str, workdir: Path) -> ExportSource:
    """Resolve `model_uri` in the tracking store behind `client` and download what the export
    needs into `workdir`."""
    parts = parse_model_uri(model_uri)
    if "run" in parts:
        return _fetch_run(client, model_uri, parts["run"], workdir)
    version = _registered_version(client, model_uri, parts)
    lineage = _lineage_from_tags(version.tags or {})
    if "base_model" not in lineage:
        raise _bad(
            model_uri,
            f"version {version.version} of '{version.name}' was not registered by ftray "
            "(it has no ftray.base_model lineage tag), so its base model is unknown",
        )
    folder = _download_model(client, version.source, workdir / "model")
    return _from_model_folder(
        model_uri,
        folder,
        lineage,
        run_id=version.run_id,
        metrics=_last_metrics(client, version.run_id) if version.run_id else {},
        registered_name=version.name,
        registered_version=str(version.version),
    )


def _download_model(client: Any, source: str, dest: Path) -> Path:
    """Download an MLflow Model (a `models:/<id>` source resolves through the process-wide
    tracking URI, so it is pointed at this client's store for the call)."""
    import mlflow

    from ftray.tracking.registry import process_tracking_uri

    dest.mkdir(parents=True, exist_ok=True)
    with process_tracking_uri(client.tracking_uri):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest)))


def _artifact_paths(model_uri: str, folder: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The pyfunc's model config and its artifacts' local paths (named by key)."""
    from mlflow.models import Model

    try:
        flavor = Model.load(str(folder)).flavors["python_function"]
    except (OSError, KeyError) as exc:
        raise _bad(
            model_uri, f"the registered model is not an ftray adapter model ({exc})"
        ) from None
    config = flavor.get("config") or flavor.get("model_config") or {}
    paths = {key: folder / item["path"] for key, item in (flavor.get("artifacts") or {}).items()}
    if "adapter" not in paths:
        raise _bad(model_uri, "the registered model has no adapter artifact")
    return config, paths


def _from_model_folder(
    model_uri: str, folder: Path, lineage: dict[str, str], **fields: Any
) -> ExportSource:
    config, paths = _artifact_paths(model_uri, folder)
    base_dir = paths.get("base")
    bundled = base_dir is not None and base_dir.is_dir()
    base = str(base_dir) if bundled else config.get("base_model") or lineage["base_model"]
    return ExportSource(
        model_uri=model_uri,
        adapter_dir=paths["adapter"],
        base=base,
        base_revision=None if bundled else config.get("base_revision"),
        lineage=lineage,
        load_in_4bit=bool(config.get("load_in_4bit", True)),
        task=config.get("task"),
        **fields,
    )


def _fetch_run(client: Any, model_uri: str, run_id: str, workdir: Path) -> ExportSource:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise _bad(model_uri, f"no run {run_id} in this tracking store") from None
    # A registered trial's adapter has a logged model beside it, with the base inside.
    logged = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=1
    )
    if logged:
        folder = _download_model(client, f"models:/{logged[0].model_id}", workdir / "model")
        lineage_file = _artifact_paths(model_uri, folder)[1]["adapter"] / LINEAGE_FILE
        lineage = json.loads(lineage_file.read_text()) if lineage_file.exists() else {}
    else:
        lineage = {}
        try:
            adapter = Path(client.download_artifacts(run_id, "adapter", str(workdir)))
        except (MlflowException, OSError):
            adapter = None
        if adapter is not None and (adapter / LINEAGE_FILE).exists():
            lineage = json.loads((adapter / LINEAGE_FILE).read_text())
    if "base_model" not in lineage:
        raise _bad(
            model_uri,
            f"run {run_id} has no adapter registered by ftray (no {LINEAGE_FILE}), so its "
            "base model is unknown; export a registered version (models:/NAME@champion)",
        )
    lineage = {k: str(v) for k, v in lineage.items()}
    if logged:
        return _from_model_folder(
            model_uri, folder, lineage, run_id=run_id, metrics=_last_metrics(client, run_id)
        )
    revision = lineage.get("base_revision")
    return ExportSource(
        model_uri=model_uri,
        run_id=run_id,
        adapter_dir=adapter,
        base=lineage["base_model"],
        base_revision=None if revision in (None, "local", "unresolved") else revision,
        lineage=lineage,
        metrics=_last_metrics(client, run_id),
    )
