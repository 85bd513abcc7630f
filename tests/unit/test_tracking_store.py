"""Where a spec's MLflow store is, where its experiments keep their artifacts, and what
ftray says about folders Ray deletes (tracking/store.py; Tune's default storage in
sweep/runner.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ftray.config import load_spec
from ftray.log import LOGGER_NAME
from ftray.sweep.runner import tune_storage_path, warn_of_folders_ray_deletes
from ftray.tracking.store import find_store, open_experiment, ray_job_folder
from tests.conftest import SPECS

JOB_DIR = "session_2026-12-01_02-00-00_123_456/runtime_resources/working_dir_files/_ray_pkg_ab12"


def write_spec(folder: Path, tracking: str) -> Path:
    """trigger_tiny in `folder`, its data path absolute, with the tracking section `tracking`."""
    text = (SPECS / "trigger_tiny.yaml").read_text()
    text = text.replace("../datasets", str(SPECS.parent / "datasets"))
    head = text[: text.index("tracking:\n")]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(f"{head}tracking:\n{tracking}  registered_model: trigger-tiny\n")
    return path


@pytest.fixture
def no_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No MLFLOW_TRACKING_URI; the current folder is a fresh one, returned."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture
def warnings_seen(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def test_the_spec_uri_is_relative_to_the_spec_and_the_environment_to_the_cwd(
    tmp_path: Path, no_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(write_spec(tmp_path / "specs", "  uri: sqlite:///db/mlflow.db\n"))
    assert spec.tracking.uri == f"sqlite:///{tmp_path / 'specs' / 'db' / 'mlflow.db'}"
    assert find_store(None, spec).uri == spec.tracking.uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert find_store(None, spec).uri == f"sqlite:///{no_environment / 'env.db'}"
    assert find_store("file:runs", spec).uri == (no_environment / "runs").as_uri()


def test_without_tracking_uri_the_store_is_mlflow_db_beside_the_spec(
    tmp_path: Path, no_environment: Path
) -> None:
    spec = load_spec(write_spec(tmp_path / "specs", ""))
    assert spec.tracking.uri is None
    assert find_store(None, spec).uri == f"sqlite:///{tmp_path / 'specs' / 'mlflow.db'}"
    assert find_store().uri == f"sqlite:///{no_environment / 'mlflow.db'}"


def test_new_experiments_keep_artifacts_beside_a_sqlite_store_whatever_the_cwd(
    tmp_path: Path, no_environment: Path
) -> None:
    spec = load_spec(write_spec(tmp_path / "specs", "  uri: sqlite:///mlflow.db\n"))
    store = find_store(None, spec)
    client = MlflowClient(store.uri)
    experiment_id = open_experiment(client, store, spec.name, {"kind": "x"})
    experiment = client.get_experiment(experiment_id)
    folder = tmp_path / "specs" / "mlartifacts" / "trigger-tiny"
    assert experiment.artifact_location == folder.as_uri()
    assert experiment.tags["kind"] == "x"
    run = client.create_run(experiment_id)
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert (folder / run.info.run_id / "artifacts" / "note.txt").read_text() == "hello"
    assert not (no_environment / "mlruns").exists()
    assert open_experiment(client, store, spec.name, {"kind": "y"}) == experiment_id


def test_a_tracking_server_keeps_its_own_artifact_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    spec = load_spec(write_spec(tmp_path / "specs", "  uri: sqlite:///mlflow.db\n"))
    store = find_store(None, spec)
    assert store.artifact_location("trigger-tiny") is None
    assert store.how_found() == "given by MLFLOW_TRACKING_URI"
    assert store.exists() and store.lasting_folder() == Path.home()


def test_an_experiment_with_artifacts_in_a_ray_job_folder_is_reported_with_the_way_out(
    tmp_path: Path, no_environment: Path, warnings_seen: pytest.LogCaptureFixture
) -> None:
    spec = load_spec(write_spec(tmp_path / "specs", "  uri: sqlite:///mlflow.db\n"))
    store = find_store(None, spec)
    client = MlflowClient(store.uri)
    doomed = tmp_path / "ray" / JOB_DIR / "mlruns" / "1"
    experiment_id = client.create_experiment(spec.name, artifact_location=doomed.as_uri())
    assert open_experiment(client, store, spec.name, {}) == experiment_id
    (warning,) = {
        r.getMessage()
        for r in warnings_seen.records
        if r.name == LOGGER_NAME and r.levelno == logging.WARNING
    }
    assert f"keeps its artifacts in {doomed}, inside the Ray job working directory " in warning
    assert str(tmp_path / "ray" / JOB_DIR) in warning
    assert (
        f"mlflow experiments rename --experiment-id {experiment_id} --new-name trigger-tiny-old"
        in warning
    )
    assert f"with its artifacts at {tmp_path / 'specs' / 'mlartifacts' / 'trigger-tiny'}" in warning


def test_tune_results_outlive_the_job_beside_the_store_or_in_home(
    tmp_path: Path, no_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(write_spec(tmp_path / "specs", "  uri: sqlite:///db/mlflow.db\n"))
    assert tune_storage_path(spec) == str(tmp_path / "specs" / "db" / "ray_results")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tune_storage_path(spec) == str(tmp_path / "home" / "ray_results")
    job = tmp_path / "ray" / JOB_DIR
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{job / 'mlflow.db'}")
    assert tune_storage_path(spec) == str(tmp_path / "home" / "ray_results")
    assert ray_job_folder(job / "search_spaces" / "mlflow.db") == job
    assert ray_job_folder(tmp_path / "specs" / "mlflow.db") is None


def test_a_store_or_tune_path_inside_a_ray_job_folder_is_warned_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warnings_seen: pytest.LogCaptureFixture
) -> None:
    job = tmp_path / "ray" / JOB_DIR
    spec = load_spec(write_spec(job / "search_spaces", "  uri: sqlite:///../mlflow.db\n"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = find_store(None, spec)
    assert store.path == job / "mlflow.db"
    warn_of_folders_ray_deletes(store, str(job / "ray_results"))
    seen = [
        r.getMessage()
        for r in warnings_seen.records
        if r.name == LOGGER_NAME and r.levelno == logging.WARNING
    ]
    assert len(set(seen)) == 2, seen
    assert any(
        m.startswith(f"the MLflow store {job / 'mlflow.db'} (the spec's tracking.uri")
        and f"inside the Ray job's working directory {job}," in m
        and "absolute MLFLOW_TRACKING_URI" in m
        for m in seen
    ), seen
    assert any(m.startswith(f"storage.tune_path {job / 'ray_results'} lies inside") for m in seen)

    warnings_seen.clear()
    warn_of_folders_ray_deletes(find_store(f"sqlite:///{tmp_path / 'm.db'}"), "s3://b/r")
    assert not [r for r in warnings_seen.records if r.name == LOGGER_NAME]
