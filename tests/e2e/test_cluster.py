"""The cluster path on one machine: resume after a killed driver, `ray job submit` /
`ray job stop` against a token-authenticated head, MLflow as a tracking server on
Postgres with the Optuna study in Postgres, and one logical GPU per trial."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, SPECS, run_cli, sqlite_store
from tests.e2e.ray_helpers import (
    SWEEP_ARGS,
    VENV_BIN,
    all_runs,
    assert_sweep_finished_once,
    free_port,
    kill_local_ray_of,
    sweep_env,
    token_head,
    trial_runs,
    wait_for,
)

pytestmark = pytest.mark.slow


def test_resume_after_the_driver_is_killed(tmp_path: Path) -> None:
    env = {**os.environ, **sweep_env(tmp_path)}
    uri = env["MLFLOW_TRACKING_URI"]
    args = ["sweep", str(SPECS / "trigger_tiny.yaml"), "--set", "search.num_trials=5", *SWEEP_ARGS]
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "ftray", *args],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: (
                sum(r.data.tags.get("ftray.trial_status") == "completed" for r in trial_runs(uri))
                >= 2
            ),
            240,
            "two finished trials",
        )
        wait_for(
            lambda: any(r.info.status == "RUNNING" for r in trial_runs(uri)),
            60,
            "a trial in flight",
        )
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        kill_local_ray_of(driver)
    finished_before = {
        r.data.tags["ftray.trial_id"]: r.info.end_time
        for r in trial_runs(uri)
        if r.info.status == "FINISHED"
    }
    assert any(r.info.status == "RUNNING" for r in all_runs(uri)), (
        "the killed driver should have left runs open"
    )

    resumed = run_cli(*args, "--resume", cwd=tmp_path, env=sweep_env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "orphaned run(s) marked KILLED" in resumed.stderr
    runs = assert_sweep_finished_once(uri, 5)
    for run in runs:
        trial_id = run.data.tags["ftray.trial_id"]
        if trial_id in finished_before:
            assert run.info.end_time == finished_before[trial_id], (
                f"trial {trial_id} finished before the kill but ran again"
            )
    parents = [r for r in all_runs(uri) if r.data.tags.get("ftray.role") == "sweep"]
    assert len(parents) == 1, "resume must reuse the parent run"
    assert parents[0].info.status == "FINISHED"
    tune_trials = list(Path(parents[0].data.tags["ftray.tune_experiment"]).glob("*/params.json"))
    assert len(tune_trials) == 5, "Ray Tune ran exactly num_trials trials"
    assert MlflowClient(uri).get_model_version_by_alias("trigger-tiny", "champion")

    again = run_cli(*args, "--resume", cwd=tmp_path, env=sweep_env(tmp_path))
    assert again.returncode == 0 and "nothing to resume" in again.stdout


@pytest.fixture(scope="module")
def ray_head() -> Iterator[dict]:
    """`ray start --head` on 127.0.0.1 with token authentication; stopped afterwards."""
    with token_head() as head:
        yield head


def job(ray_head: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [f"{VENV_BIN}/ray", "job", *args],
        env=ray_head["env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def runtime_env(work: Path) -> str:
    import json

    return json.dumps(
        {
            "env_vars": {
                "MLFLOW_TRACKING_URI": sqlite_store(work),
                "HF_HUB_OFFLINE": "1",
                "FTRAY_CACHE_DIR": os.environ["FTRAY_CACHE_DIR"],
                "RAY_JOB_STOP_SIGNAL": "SIGINT",
                "RAY_JOB_STOP_WAIT_TIME_S": "90",
            },
            "excludes": [".venv", ".git", "mlflow.db", "mlruns", "ray_results", "runs"],
        }
    )


def submit_sweep(
    ray_head: dict, work: Path, num_trials: int, *submit_flags: str, resume: bool = False
) -> subprocess.CompletedProcess[str]:
    """`ray job submit --working-dir .` of a CPU sweep of the tiny spec, state under `work`."""
    entry = [
        sys.executable,
        "-m",
        "ftray",
        "sweep",
        "search_spaces/trigger_tiny.yaml",
        "--set",
        f"search.num_trials={num_trials}",
        *SWEEP_ARGS,
        "--set",
        f"storage.tune_path={work / 'tune'}",
        *(["--resume"] if resume else []),
    ]
    return job(
        ray_head,
        "submit",
        *submit_flags,
        "--address",
        ray_head["address"],
        "--working-dir",
        ".",
        "--runtime-env-json",
        runtime_env(work),
        "--",
        *entry,
    )


def test_ray_job_submit_to_a_token_authenticated_head(ray_head: dict, tmp_path: Path) -> None:
    without_token = {k: v for k, v in ray_head["env"].items() if k != "RAY_AUTH_TOKEN"}
    refused = subprocess.run(
        [f"{VENV_BIN}/ray", "job", "list", "--address", ray_head["address"]],
        env={**without_token, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "no-token")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0, "the head must refuse clients without the token"

    result = submit_sweep(ray_head, tmp_path, 2)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "succeeded" in result.stdout
    uri = sqlite_store(tmp_path)
    assert_sweep_finished_once(uri, 2)
    assert MlflowClient(uri).get_model_version_by_alias("trigger-tiny", "champion")


def test_ray_job_stop_saves_state_and_resume_completes(ray_head: dict, tmp_path: Path) -> None:
    uri = sqlite_store(tmp_path)
    job_id = f"ftray-stop-{secrets.token_hex(4)}"
    submitted = submit_sweep(ray_head, tmp_path, 4, "--no-wait", "--submission-id", job_id)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    wait_for(
        lambda: any(r.data.tags.get("ftray.trial_status") == "completed" for r in trial_runs(uri)),
        300,
        "a finished trial",
    )
    stopped = job(ray_head, "stop", "--address", ray_head["address"], job_id)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_for(
        lambda: all(r.info.status != "RUNNING" for r in all_runs(uri)),
        120,
        "no RUNNING run after ray job stop",
    )
    logs = job(ray_head, "logs", "--address", ray_head["address"], job_id).stdout
    assert "sweep interrupted; Ray Tune saved its state" in logs, logs[-3000:]
    assert len(trial_runs(uri)) < 4 or any(
        r.data.tags["ftray.trial_status"] == "killed" for r in trial_runs(uri)
    )

    resumed = submit_sweep(ray_head, tmp_path, 4, resume=True)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-2000:]
    assert_sweep_finished_once(uri, 4)


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


def test_one_logical_gpu_per_trial_on_a_multi_node_cluster(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})
    try:
        for _ in range(3):
            cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        uri = sqlite_store(tmp_path)
        result = run_cli(
            "sweep",
            str(SPECS / "trigger_tiny.yaml"),
            "--set",
            "search.num_trials=5",
            "--set",
            "search.max_concurrent_trials=5",
            "--set",
            "train.epochs=1",
            "--set",
            "search.scheduler=fifo",
            "--set",
            "resources_per_trial.gpu=1",
            "--set",
            "resources_per_trial.cpu=1",
            cwd=tmp_path,
            env={
                "MLFLOW_TRACKING_URI": uri,
                "RAY_ADDRESS": cluster.address,
                # The GPUs are logical: there is no CUDA behind them.
                "FTRAY_ALLOW_CPU_FALLBACK": "1",
            },
        )
        assert result.returncode == 0, result.stderr[-4000:]
    finally:
        cluster.shutdown()
    runs = assert_sweep_finished_once(uri, 5)
    spans = []
    for run in runs:
        tags = run.data.tags
        assert tags["ftray.backend"] == "peft", "no real CUDA here: auto must pick peft"
        assert tags["ftray.gpu_ids"] != "", "each trial must hold a GPU"
        assert len(tags["ftray.gpu_ids"].split(",")) == 1
        spans.append(
            (run.info.start_time, run.info.end_time, (tags["ftray.node_id"], tags["ftray.gpu_ids"]))
        )
    for i, (start_a, end_a, gpu_a) in enumerate(spans):
        for start_b, end_b, gpu_b in spans[i + 1 :]:
            overlap = start_a < end_b and start_b < end_a
            assert not (overlap and gpu_a == gpu_b), "two trials shared one GPU"
    events = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 3, f"concurrency should equal the 3 GPUs, was {peak}"
    assert len({gpu for _, _, gpu in spans}) == 3


def test_a_trial_given_a_gpu_without_cuda_fails_at_once(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
    try:
        cluster.wait_for_nodes()
        uri = sqlite_store(tmp_path)
        started = time.monotonic()
        result = run_cli(
            "sweep",
            str(SPECS / "trigger_tiny.yaml"),
            "--set",
            "search.num_trials=1",
            "--set",
            "train.epochs=3",
            "--set",
            "resources_per_trial.gpu=1",
            cwd=tmp_path,
            env={"MLFLOW_TRACKING_URI": uri, "RAY_ADDRESS": cluster.address},
        )
        elapsed = time.monotonic() - started
    finally:
        cluster.shutdown()
    assert result.returncode == 1, result.stderr[-4000:]
    assert "error: all 1 trials failed" in result.stderr
    cause = next(line for line in result.stderr.splitlines() if "trial failure:" in line)
    assert "asked for 1 GPU" in cause and "torch sees no CUDA device" in cause, cause
    assert "NVIDIA driver" in cause and "FTRAY_ALLOW_CPU_FALLBACK" in cause
    (run,) = trial_runs(uri)
    assert run.data.tags["ftray.trial_status"] == "failed"
    assert "epoch" not in run.data.metrics, "the trial must fail before training"
    # Failing at once, not retried nor left waiting: unloaded this takes about 40 s, and a
    # trial that waited for a device or was retried would run into run_cli's timeout.
    assert elapsed < 300, f"took {elapsed:.0f}s"
