"""The MLflow model registry: the best trial's adapter becomes a registered version; the
alias `champion` moves to it only when it beats the current champion."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftray.config.search import Objective
from ftray.tracking.tags import LINEAGE_PREFIX

CHAMPION = "champion"


@dataclass(frozen=True)
class Lineage:
    """Where an adapter came from; stored as version tags and as `lineage.json` beside it."""

    base_model: str
    base_revision: str
    dataset_sha256: str
    spec_sha256: str
    objective: str
    objective_value: float
    mode: str
    trial_id: str
    sweep_run_id: str

    def tags(self) -> dict[str, str]:
        """Version tags, prefixed `ftray.`."""
        return {f"{LINEAGE_PREFIX}{k}": str(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Registration:
    """The outcome of registering one trial's adapter."""

    name: str
    version: str
    created: bool
    champion_moved: bool
    champion_version: str | None

    @property
    def model_uri(self) -> str:
        """The registry URI of this version."""
        return f"models:/{self.name}/{self.version}"


def beats(new: float, old: float, mode: str) -> bool:
    """Whether `new` is strictly better than `old` for an objective optimised in `mode`."""
    return Objective(metric="objective_value", mode=mode).better(new, old)  # type: ignore[arg-type]


def _existing_version(client: Any, name: str, run_id: str) -> Any | None:
    """The version already registered from this trial's run, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    return next((v for v in versions if v.run_id == run_id), None)


def _current_champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def register_adapter(
    client: Any,
    name: str,
    run_id: str,
    adapter_dir: Path,
    lineage: Lineage,
    *,
    force: bool = False,
) -> Registration:
    """Log `adapter_dir` to the trial's run and register it as a version of `name`.

    Registering the same run again returns the existing version. The `champion` alias
    moves to the version when there is no champion, when it beats the champion's
    objective value, or with `force`.
    """
    from mlflow.exceptions import MlflowException

    version = _existing_version(client, name, run_id)
    created = version is None
    if version is None:
        if not client.list_artifacts(run_id, "adapter"):
            (adapter_dir / "lineage.json").write_text(json.dumps(lineage.__dict__, indent=2) + "\n")
            client.log_artifacts(run_id, str(adapter_dir), "adapter")
        try:
            client.create_registered_model(
                name, description="LoRA adapters registered by ftray sweeps"
            )
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/adapter"
        version = client.create_model_version(
            name, source=source, run_id=run_id, tags=lineage.tags()
        )

    champion = _current_champion(client, name)
    moved = False
    same = champion is not None and str(champion.version) == str(version.version)
    if (
        champion is None
        or force
        or (
            not same
            and beats(
                float(
                    (version.tags or {}).get(
                        f"{LINEAGE_PREFIX}objective_value", lineage.objective_value
                    )
                ),
                float((champion.tags or {}).get(f"{LINEAGE_PREFIX}objective_value", "nan")),
                lineage.mode,
            )
        )
    ):
        if not same:
            client.set_registered_model_alias(name, CHAMPION, str(version.version))
            moved = True
        champion = version
    return Registration(
        name, str(version.version), created, moved, str(champion.version) if champion else None
    )


def promote(client: Any, name: str, version: str, alias: str = CHAMPION) -> None:
    """Point `alias` at `version` by hand."""
    client.get_model_version(name, version)  # raises when the version does not exist
    client.set_registered_model_alias(name, alias, version)
