"""MLflow as a tracking server on the local PostgreSQL, with the Optuna study in PostgreSQL."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SPECS, run_cli
from tests.e2e.ray_helpers import (
    SWEEP_ARGS,
    VENV_BIN,
    all_runs,
    assert_sweep_finished_once,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def postgres_databases():
    """Two fresh databases on the local PostgreSQL server (MLflow's and Optuna's: both keep
    an alembic_version table, so they cannot share one), dropped afterwards."""
    import psycopg

    names = [f"ftray_test_{secrets.token_hex(4)}" for _ in range(2)]
    try:
        admin = psycopg.connect(
            host="127.0.0.1",
            port=5432,
            dbname="postgres",
            user=os.environ.get("PGUSER", "postgres"),
            autocommit=True,
        )
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server on 127.0.0.1:5432 ({exc})")
    user = os.environ.get("PGUSER", "postgres")
    try:
        with admin.cursor() as cursor:
            for name in names:
                cursor.execute(f'CREATE DATABASE "{name}"')
        yield [f"postgresql://{user}@127.0.0.1:5432/{name}" for name in names]
    finally:
        with admin.cursor() as cursor:
            for name in names:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_mlflow_server_on_postgres_and_optuna_study_in_postgres(
    postgres_databases: list[str], tmp_path: Path
) -> None:
    import optuna
    import requests

    mlflow_db, optuna_db = postgres_databases
    port = free_port()
    server = subprocess.Popen(
        [
            f"{VENV_BIN}/mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            mlflow_db,
            "--serve-artifacts",
            "--artifacts-destination",
            (tmp_path / "artifacts").as_uri(),
        ],
        cwd=tmp_path,
        stdout=(tmp_path / "server.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def healthy() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok
            except requests.RequestException:
                return False

        wait_for(healthy, 120, "mlflow server")
        uri = f"http://127.0.0.1:{port}"
        result = run_cli(
            "sweep",
            str(SPECS / "trigger_tiny.yaml"),
            "--set",
            "search.num_trials=3",
            *SWEEP_ARGS,
            "--set",
            f"storage.optuna_url={optuna_db}",
            "--set",
            f"storage.tune_path={tmp_path / 'ray_results'}",
            cwd=tmp_path,
            env={"MLFLOW_TRACKING_URI": uri},
        )
        assert result.returncode == 0, result.stderr[-4000:]
        runs = assert_sweep_finished_once(uri, 3)
        champion = MlflowClient(uri).get_model_version_by_alias("trigger-tiny", "champion")
        # The version is a logged MLflow model whose files the server proxies.
        logged = MlflowClient(uri).get_logged_model(champion.source.removeprefix("models:/"))
        assert logged.artifact_location.startswith("mlflow-artifacts:"), logged.artifact_location
        assert list((tmp_path / "artifacts").rglob("MLmodel")), "the model went through the server"
        assert list((tmp_path / "artifacts").rglob("adapter_config.json")), (
            "artifacts must be proxied by the server"
        )
        assert not (tmp_path / "mlflow.db").exists()

        parent = next(r for r in all_runs(uri) if r.data.tags.get("ftray.role") == "sweep")
        study = optuna.load_study(
            study_name=parent.data.tags["ftray.optuna_study"], storage=optuna_db
        )
        assert len(study.trials) == 3
        assert {t.params["lora.r"] for t in study.trials} == {
            int(r.data.params["lora.r"]) for r in runs
        }
        assert all(t.state.name == "COMPLETE" for t in study.trials)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
