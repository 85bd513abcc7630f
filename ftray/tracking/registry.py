"""The MLflow model registry: the winning trial's adapter becomes a registered version (an
MLflow Model that loads and serves); the alias `champion` moves to it only when it beats
the current champion on the same test (same objective, same held-out fingerprint)."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftray.config.search import Objective
from ftray.tasks.intervals import HIGH, LOW, is_interval, shown_with_interval
from ftray.tracking.tags import LINEAGE_PREFIX

CHAMPION = "champion"
LOCK_SUFFIX = ".ftray-champion-lock"
STALE_LOCK_SECONDS = 120.0
"""A lock older than this was left by a dead process (a decision takes well under a second)."""
VERSION_CREATE_ATTEMPTS = 8


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
    heldout_fingerprint: str = ""
    """sha256 of the held-out cases and generation settings the objective was measured on."""
    objective_ci_low: float | None = None
    objective_ci_high: float | None = None
    """The objective's 95% interval over the held-out prompts (None for a loss)."""

    def tags(self) -> dict[str, str]:
        """Version tags, prefixed `ftray.` (an interval only where there is one)."""
        return {f"{LINEAGE_PREFIX}{k}": str(v) for k, v in self.__dict__.items() if v is not None}

    def real_gain_over(self, held: float) -> bool:
        """Whether this version's objective is better than `held` (the champion's value on the
        same held-out prompts) beyond noise: `held` lies outside this version's 95% interval,
        on the worse side. Without an interval (a loss), any improvement counts."""
        bound = self.objective_ci_low if self.mode == "max" else self.objective_ci_high
        if bound is None or math.isnan(bound):
            return True
        return beats(bound, held, self.mode)


@dataclass(frozen=True)
class ModelPackage:
    """What goes into the registered MLflow Model besides the adapter."""

    base_dir: Path | None = None
    """A base folder that travels with the model (the `tiny` model); None for a Hub base."""
    config: dict[str, Any] = field(default_factory=dict)
    """The pyfunc's model_config: base_model, base_revision, load_in_4bit, max_new_tokens..."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The winning trial's last metrics, shown on the version."""
    example: tuple[str, ...] = ("What is the capital of France?",)
    """An input example: prompts the model answers."""
    notes: tuple[str, ...] = ()
    """Lines the version's description ends with (what the sweep spent)."""
    task_config: dict[str, Any] = field(default_factory=dict)
    """What the task serves with besides the weights (`Task.serving_config`: a chat task's
    tools), stored as JSON in the model."""


@dataclass(frozen=True)
class Registration:
    """The outcome of registering one trial's adapter."""

    name: str
    version: str
    created: bool
    champion_moved: bool
    champion_version: str | None
    reason: str | None = None
    """Why the champion did not move, when it was not compared (other test) or did not lose."""

    @property
    def model_uri(self) -> str:
        """The registry URI of this version."""
        return f"models:/{self.name}/{self.version}"


def beats(new: float, old: float, mode: str) -> bool:
    """Whether `new` is strictly better than `old` for an objective optimised in `mode`."""
    return Objective(metric="objective_value", mode=mode).better(new, old)  # type: ignore[arg-type]


def with_bounds(metric: str, value: float, metrics: dict[str, float]) -> str:
    """`0.94 [0.85, 0.98]` from the metric's `_ci_low` / `_ci_high` beside it, else `0.94`."""
    return shown_with_interval(value, metrics.get(metric + LOW), metrics.get(metric + HIGH))


def version_description(
    lineage: Lineage, metrics: dict[str, float], notes: tuple[str, ...] = ()
) -> str:
    """A short Markdown summary of a version: its objective, behaviour metrics and lineage."""
    lines = [
        f"LoRA adapter registered by ftray from trial `{lineage.trial_id}`.",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| **{lineage.objective}** ({lineage.mode}, selection) | "
        f"**{with_bounds(lineage.objective, lineage.objective_value, metrics)}** |",
    ]
    for key, value in sorted(metrics.items()):
        if (
            key != lineage.objective
            and key not in ("epoch",)
            and not is_interval(key)
            and math.isfinite(value)
        ):
            lines.append(f"| {key} | {with_bounds(key, value, metrics)} |")
    if any(is_interval(key) for key in metrics):
        lines += ["", "In brackets: the 95% interval over the held-out prompts."]
    lines += [
        "",
        "| lineage | |",
        "| --- | --- |",
        f"| base model | `{lineage.base_model}` @ `{lineage.base_revision}` |",
        f"| dataset sha256 | `{lineage.dataset_sha256[:16]}…` |",
        f"| held-out fingerprint | `{lineage.heldout_fingerprint[:16]}…` |",
        f"| spec sha256 | `{lineage.spec_sha256[:16]}…` |",
        f"| sweep run | `{lineage.sweep_run_id}` |",
    ]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


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


def _create_version(
    client: Any, name: str, run_id: str, adapter_dir: Path, lineage: Lineage, package: ModelPackage
) -> Any:
    from mlflow.exceptions import MlflowException

    from ftray.tracking.pyfunc import log_adapter_model

    (adapter_dir / "lineage.json").write_text(json.dumps(lineage.__dict__, indent=2) + "\n")
    if not client.list_artifacts(run_id, "adapter"):
        client.log_artifacts(run_id, str(adapter_dir), "adapter")
    run = client.get_run(run_id)
    logged = log_adapter_model(
        client,
        run.info.experiment_id,
        run_id,
        adapter_dir,
        package.base_dir,
        {"max_new_tokens": 64, "batch_size": 16, "load_in_4bit": True, **package.config},
        list(package.example),
        package.task_config,
    )
    try:
        client.create_registered_model(name, description="LoRA adapters registered by ftray sweeps")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    # MLflow resolves a models:/<id> source through the process-wide tracking URI, not this
    # client's; the version must point at the logged model (not its folder) to link to it.
    # MLflow numbers a new version max+1 and, when another process took that number first,
    # retries three times at once and gives up ("Model Version creation error ... Giving up");
    # sweeps registering into one name at once hit that, so ftray retries with a pause.
    attempt = 0
    while True:
        try:
            with process_tracking_uri(client.tracking_uri):
                return client.create_model_version(
                    name,
                    source=logged.model_uri,
                    run_id=run_id,
                    tags=lineage.tags(),
                    description=version_description(lineage, package.metrics, package.notes),
                    model_id=logged.model_id,
                )
        except MlflowException as exc:
            attempt += 1
            if "Model Version creation error" not in str(exc) or attempt == VERSION_CREATE_ATTEMPTS:
                raise
            time.sleep(random.uniform(0.1, 0.5) * attempt)


@contextmanager
def process_tracking_uri(uri: str) -> Iterator[None]:
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _comparable(champion: Any, lineage: Lineage) -> str | None:
    """Why the champion cannot be compared with `lineage` (None when it can)."""
    tags = champion.tags or {}
    theirs = tags.get(f"{LINEAGE_PREFIX}objective")
    if theirs != lineage.objective:
        return f"it was chosen on {theirs}, this version on {lineage.objective}"
    fingerprint = tags.get(f"{LINEAGE_PREFIX}heldout_fingerprint", "")
    if fingerprint != lineage.heldout_fingerprint:
        return (
            f"it was scored on other held-out data (fingerprint {fingerprint[:12] or 'none'}, "
            f"this version {lineage.heldout_fingerprint[:12] or 'none'})"
        )
    return None


def register_adapter(
    client: Any,
    name: str,
    run_id: str,
    adapter_dir: Path,
    lineage: Lineage,
    *,
    force: bool = False,
    package: ModelPackage | None = None,
) -> Registration:
    """Register the adapter of the trial run `run_id` as a new version of `name`.

    The version is an MLflow Model (a pyfunc that loads the base and the adapter), with
    the lineage as tags and a Markdown summary as its description; the adapter folder with
    `lineage.json` is also kept under `adapter/` of the run. Registering the same run again
    returns the existing version. `champion` moves to the version when there is no
    champion, with `force`, or when the champion was measured on the same objective and
    held-out fingerprint and the version beats its objective value beyond noise (the
    champion's value is outside the version's 95% interval: `Lineage.real_gain_over`).
    """
    version = _existing_version(client, name, run_id)
    created = version is None
    if version is None:
        version = _create_version(
            client, name, run_id, adapter_dir, lineage, package or ModelPackage()
        )

    with champion_lock(client, name):
        return _decide_champion(client, name, version, lineage, created, force)


def _decide_champion(
    client: Any, name: str, version: Any, lineage: Lineage, created: bool, force: bool
) -> Registration:
    """Move `champion` to `version` when it wins (see `register_adapter`); under the lock."""
    champion = _current_champion(client, name)
    same = champion is not None and str(champion.version) == str(version.version)
    moved, reason = False, None
    if champion is None or (force and not same):
        client.set_registered_model_alias(name, CHAMPION, str(version.version))
        moved, champion = True, version
    elif not same:
        reason = _comparable(champion, lineage)
        if reason is None:
            value = float(
                (version.tags or {}).get(
                    f"{LINEAGE_PREFIX}objective_value", lineage.objective_value
                )
            )
            held = float((champion.tags or {}).get(f"{LINEAGE_PREFIX}objective_value", "nan"))
            if beats(value, held, lineage.mode) and lineage.real_gain_over(held):
                client.set_registered_model_alias(name, CHAMPION, str(version.version))
                moved, champion = True, version
            elif beats(value, held, lineage.mode):
                interval = f"[{lineage.objective_ci_low:.2f}, {lineage.objective_ci_high:.2f}]"
                reason = (
                    f"it scores {held:.4g} on {lineage.objective}, this version {value:.4g} "
                    f"{interval}: within this version's 95% interval, no real gain; "
                    f"`ftray promote {name} {version.version}` moves it"
                )
            else:
                reason = f"it scores {held:.4g} on {lineage.objective}, this version {value:.4g}"
        else:
            reason = f"not compared: {reason}; `ftray promote {name} {version.version}` moves it"
    return Registration(
        name,
        str(version.version),
        created,
        moved,
        str(champion.version) if champion else None,
        reason,
    )


@contextmanager
def champion_lock(client: Any, name: str, timeout: float = 300.0) -> Iterator[None]:
    """Hold the champion decision of registered model `name` against every other process,
    here or on another machine, that registers into it through the same tracking store.

    Reading the champion and moving the alias are two requests; two sweeps finishing at
    once would otherwise both read the old champion and the last writer would win, better
    or not. The lock is the registered model `<name>.ftray-champion-lock`: the store creates
    a name at most once, so whoever creates it holds the lock, and deleting it releases it.
    A lock older than `STALE_LOCK_SECONDS` was left by a dead process and is broken.
    """
    from mlflow.exceptions import MlflowException

    lock = f"{name}{LOCK_SUFFIX}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_registered_model(
                lock, description=f"ftray: a champion decision on {name} is in progress"
            )
            break
        except MlflowException as exc:
            # Held by another process; or released just as the store answered (it then reports
            # the name it had found as gone): either way, try again.
            retried = ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST")
            if not any(code in str(exc.error_code) for code in retried):
                raise
        _break_stale_lock(client, lock)
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"registered model {lock} has been held for {timeout:.0f}s; if no sweep is "
                "registering into it, delete that registered model"
            )
        time.sleep(random.uniform(0.05, 0.25))
    try:
        yield
    finally:
        with suppress(MlflowException):
            client.delete_registered_model(lock)


def _break_stale_lock(client: Any, lock: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        created = client.get_registered_model(lock).creation_timestamp or 0
        if time.time() - created / 1000 > STALE_LOCK_SECONDS:
            client.delete_registered_model(lock)
    except MlflowException:
        pass  # released (or broken) meanwhile


def promote(client: Any, name: str, version: str, alias: str = CHAMPION) -> None:
    """Point `alias` at `version` by hand."""
    client.get_model_version(name, version)  # raises when the version does not exist
    with champion_lock(client, name):
        client.set_registered_model_alias(name, alias, version)
