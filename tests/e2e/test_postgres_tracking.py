"""MLflow as a tracking server on the local PostgreSQL, with the Optuna study in PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SPECS, run_cli
from tests.e2e.postgres import USER, fresh_database, mlflow_server
from tests.e2e.ray_helpers import (
    SWEEP_ARGS,
    all_runs,
    assert_sweep_finished_once,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def postgres_databases() -> Iterator[list[str]]:
    """Two fresh databases on the local PostgreSQL server (MLflow's and Optuna's: both keep
    an alembic_version table, so they cannot share one), dropped afterwards."""
    with fresh_database() as mlflow_db, fresh_database() as optuna_db:
        yield [f"postgresql://{USER}@127.0.0.1:5432/{name}" for name in (mlflow_db, optuna_db)]


def test_mlflow_server_on_postgres_and_optuna_study_in_postgres(
    postgres_databases: list[str], tmp_path: Path
) -> None:
    import optuna

    mlflow_db, optuna_db = postgres_databases
    with mlflow_server(tmp_path, mlflow_db) as uri:
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
