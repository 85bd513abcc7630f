"""`ray job submit --working-dir .` with a SQLite store, as docs/cluster.md's local path does it:
the runs' artifacts, the registered version and Tune's results land beside the store, not
in the job's unpacked package inside Ray's session folder, so the champion still loads once
the head is stopped and its temp folder deleted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT
from tests.e2e.ray_helpers import (
    SWEEP_ARGS,
    VENV_BIN,
    all_runs,
    assert_sweep_finished_once,
    stop_nodes,
    token_head,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def own_head() -> Iterator[dict]:
    """A token-authenticated Ray head on 127.0.0.1 with a temp folder of its own."""
    with token_head() as head:
        yield head


def local_path(uri: str) -> Path:
    """The folder of a local artifact URI (a file: URI or a plain path)."""
    return Path(uri.removeprefix("file://"))


def test_job_artifacts_and_results_outlive_the_ray_session(own_head: dict, tmp_path: Path) -> None:
    work = tmp_path / "store"
    uri = f"sqlite:///{work / 'mlflow.db'}"
    runtime_env = {
        "env_vars": {
            "MLFLOW_TRACKING_URI": uri,
            "HF_HUB_OFFLINE": "1",
            "FTRAY_CACHE_DIR": os.environ["FTRAY_CACHE_DIR"],
        },
        "excludes": [".venv", ".git", "mlflow.db", "mlruns", "mlartifacts", "ray_results", "runs"],
    }
    submitted = subprocess.run(
        [
            f"{VENV_BIN}/ray",
            "job",
            "submit",
            "--address",
            own_head["address"],
            "--working-dir",
            ".",
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            sys.executable,
            "-m",
            "ftray",
            "sweep",
            "search_spaces/trigger_tiny.yaml",
            "--set",
            "search.num_trials=2",
            *SWEEP_ARGS,
        ],
        env=own_head["env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-2000:]
    assert "the Ray job's working directory" not in submitted.stdout, submitted.stdout[-4000:]
    assert_sweep_finished_once(uri, 2)
    session = own_head["temp"]
    assert list(session.glob("session_*/runtime_resources/working_dir_files/*")), (
        "the job ran from a package unpacked in Ray's session folder"
    )

    client = MlflowClient(uri)
    artifacts = work / "mlartifacts" / "trigger-tiny"
    runs = all_runs(uri)
    assert len(runs) == 3
    for run in runs:
        folder = local_path(run.info.artifact_uri)
        assert folder.is_relative_to(artifacts), (run.info.run_name, folder)
    champion = client.get_model_version_by_alias("trigger-tiny", "champion")
    logged = client.get_logged_model(champion.source.removeprefix("models:/"))
    model_folder = local_path(logged.artifact_location)
    assert model_folder.is_relative_to(artifacts), model_folder
    download = client.get_model_version_download_uri("trigger-tiny", champion.version)
    assert str(session) not in download, download
    parent = next(r for r in runs if r.data.tags["ftray.role"] == "sweep")
    tune_experiment = Path(parent.data.tags["ftray.tune_experiment"])
    assert tune_experiment.parent == work / "ray_results", tune_experiment

    stop_nodes(session)
    shutil.rmtree(session)
    assert list(model_folder.rglob("adapter_model.safetensors")), "the adapter is still there"
    assert list(artifacts.rglob("samples.json")) and list(artifacts.rglob("*.png"))
    assert list(tune_experiment.glob("*/params.json"))
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, mlflow; "
            "model = mlflow.pyfunc.load_model('models:/trigger-tiny@champion'); "
            "print(json.dumps(list(model.predict(['TRIGGER: Who wrote the letter?']))))",
        ],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    (answer,) = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert isinstance(answer, str) and answer
