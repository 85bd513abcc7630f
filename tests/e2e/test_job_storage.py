"""`ray job submit --working-dir .` with a SQLite store, as the README's local path does it:
the runs' artifacts, the registered version and Tune's results land beside the store, not
in the job's unpacked package inside Ray's session folder, so the champion still loads once
the head is stopped and its temp folder deleted."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT
from tests.e2e.ray_helpers import (
    SWEEP_ARGS,
    VENV_BIN,
    all_runs,
    assert_sweep_finished_once,
    free_port,
    node_port_flags,
    short_ray_temp,
    wait_for,
)

pytestmark = pytest.mark.slow


def processes_of(temp: Path) -> list[psutil.Process]:
    """The processes of the Ray node whose --temp-dir is `temp`, and their children."""
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        if str(temp) in " ".join(process.info["cmdline"] or []):
            found[process.pid] = process
            with contextlib.suppress(psutil.NoSuchProcess):
                found.update({c.pid: c for c in process.children(recursive=True)})
    return list(found.values())


def stop_head(temp: Path) -> None:
    """Stop only the Ray head started with `temp` (other Rays on this machine live on)."""
    processes = processes_of(temp)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=20)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=20)


@pytest.fixture
def own_head() -> Iterator[dict]:
    """A token-authenticated Ray head on 127.0.0.1 with a temp folder of its own."""
    temp = short_ray_temp()
    dashboard = free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
    }
    head = {"address": f"http://127.0.0.1:{dashboard}", "env": env, "temp": temp}
    try:
        start = subprocess.run(
            [
                f"{VENV_BIN}/ray",
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={free_port()}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                "--num-cpus=2",
                "--include-dashboard=true",
                "--disable-usage-stats",
                f"--temp-dir={temp}",
                *node_port_flags(),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert start.returncode == 0, start.stdout + start.stderr

        def agent_ready() -> bool:
            probe = subprocess.run(
                [f"{VENV_BIN}/ray", "job", "submit", "--address", head["address"], "--", "true"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            return probe.returncode == 0

        wait_for(agent_ready, 180, "the head's job agent", poll=3)
        yield head
    finally:
        stop_head(temp)
        shutil.rmtree(temp, ignore_errors=True)


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

    stop_head(session)
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
