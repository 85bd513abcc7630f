"""The cluster path on one machine: resume after a killed driver, cluster/submit.sh and
`ray job submit` / `ray job stop` against a token-authenticated head. (MLflow as a tracking
server on Postgres: test_postgres_tracking.py; GPUs on a cluster: test_cluster_gpus.py.
Separate files, so that the test processes of `make test` share them out.)"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import ROOT, SPECS, run_cli, sqlite_store
from tests.e2e.ray_helpers import (
    SWEEP_ARGS,
    VENV_BIN,
    all_runs,
    assert_sweep_finished_once,
    kill_local_ray_of,
    start_driver,
    sweep_env,
    token_head,
    trial_runs,
    wait_for,
)

pytestmark = pytest.mark.slow

LEASE_SECONDS = 45.0
"""The killed driver's lease: long enough for the first `--resume` to meet it live."""


def test_resume_after_the_driver_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves the sweep's lease behind: `--resume` is refused until it lapses (its
    length is what the driver recorded), then takes the sweep over."""
    env = {**os.environ, **sweep_env(tmp_path), "FTRAY_LEASE_SECONDS": str(LEASE_SECONDS)}
    uri = env["MLFLOW_TRACKING_URI"]
    args = ["sweep", str(SPECS / "trigger_tiny.yaml"), "--set", "search.num_trials=5", *SWEEP_ARGS]
    driver = start_driver(args, tmp_path, env, tmp_path / "first.log")
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
        early = run_cli(*args, "--resume", cwd=tmp_path, env=sweep_env(tmp_path))
    finally:
        kill_local_ray_of(driver)
    assert early.returncode == 2, early.stderr[-4000:]
    assert f"pid {driver.pid}, last heartbeat" in early.stderr, early.stderr[-4000:]
    [parent] = [r for r in all_runs(uri) if r.data.tags.get("ftray.role") == "sweep"]
    lease = json.loads(parent.data.tags["ftray.lease"])
    assert lease["pid"] == driver.pid and lease["seconds"] == LEASE_SECONDS
    time.sleep(max(0.0, lease["heartbeat"] + LEASE_SECONDS + 1 - time.time()))
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
    assert "sent no heartbeat for" in resumed.stderr and "taking it over" in resumed.stderr
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


def test_cluster_submit_sh_runs_a_sweep_on_a_token_authenticated_head(
    ray_head: dict, tmp_path: Path
) -> None:
    """The shipped launcher as a user runs it: cluster/submit.sh with cluster/runtime_env.yaml
    as it is, from a shell that sets RAY_ADDRESS, the token and an absolute store (with a quote
    and a space in its path, which the copy of the runtime env must carry intact)."""
    without_token = {k: v for k, v in ray_head["env"].items() if k != "RAY_AUTH_TOKEN"}
    refused = subprocess.run(
        [f"{VENV_BIN}/ray", "job", "list", "--address", ray_head["address"]],
        env={**without_token, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "no-token")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0, "the head must refuse clients without the token"

    uri = sqlite_store(tmp_path / "it's a store")
    # The job's driver and trials get the head's environment (Ray's workers inherit the
    # raylet's) plus the runtime env's env_vars, never this shell's: HF_HUB_OFFLINE and
    # FTRAY_CACHE_DIR reach them from the head's, as a user's would from the shell that ran
    # `ray start`, and so does the PATH that finds `ftray` (the head's VENV_BIN, as an
    # activated virtualenv would). RAY_AUTH_MODE is left to submit.sh's default.
    shell = {
        k: v
        for k, v in ray_head["env"].items()
        if k not in ("HF_HUB_OFFLINE", "FTRAY_CACHE_DIR", "RAY_AUTH_MODE", "RAY_ADDRESS")
    }
    space = "{lora.r: {choice: [4, 8]}, train.learning_rate: {loguniform: [1.0e-3, 1.0e-2]}}"
    submitted = subprocess.run(
        [
            str(ROOT / "cluster" / "submit.sh"),
            "search_spaces/trigger_tiny.yaml",
            *("--set", "search.num_trials=2", *SWEEP_ARGS),
            *("--set", f"search.space={space}"),  # one argument, spaces and braces in it
        ],
        env={**shell, "RAY_ADDRESS": ray_head["address"], "MLFLOW_TRACKING_URI": uri},
        cwd=tmp_path,  # submit.sh uploads the repository wherever it is started
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-2000:]
    assert "succeeded" in submitted.stdout and "registered models:/trigger-tiny/1" in (
        submitted.stdout
    ), submitted.stdout[-4000:]
    assert "the Ray job's working directory" not in submitted.stdout, submitted.stdout[-4000:]
    runs = assert_sweep_finished_once(uri, 2)
    assert {r.data.params["lora.r"] for r in runs} <= {"4", "8"}
    champion = MlflowClient(uri).get_model_version_by_alias("trigger-tiny", "champion")
    assert champion.run_id in {r.info.run_id for r in runs}

    # Ray got the shipped runtime env as the file has it, plus the store: nothing lost to
    # YAML or to quoting on the way.
    listed = subprocess.run(
        [f"{VENV_BIN}/ray", "list", "jobs", "--address", ray_head["address"], "--detail"]
        + ["--format", "json"],
        env=ray_head["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    (job,) = [j for j in json.loads(listed.stdout) if j["entrypoint"].startswith("ftray sweep")]
    (shipped,) = yaml.safe_load_all((ROOT / "cluster" / "runtime_env.yaml").read_text())
    sent = job["runtime_env"]
    assert sent["env_vars"] == {**shipped["env_vars"], "MLFLOW_TRACKING_URI": uri}
    assert sent["excludes"] == shipped["excludes"]
    package = sent["working_dir"].removeprefix("gcs://").removesuffix(".zip")
    unpacked = ray_head["temp"] / "session_latest" / "runtime_resources" / "working_dir_files"
    unpacked /= package
    uploaded = {p.name for p in unpacked.iterdir()}
    assert {"ftray", "search_spaces", "datasets"} <= uploaded
    assert not uploaded & {".venv", ".git", "mlflow.db", "mlruns", "mlartifacts", "ray_results"}


def test_ray_job_stop_saves_state_and_resume_completes(ray_head: dict, tmp_path: Path) -> None:
    uri = sqlite_store(tmp_path)
    job_id = f"ftray-stop-{secrets.token_hex(4)}"
    submitted = submit_sweep(ray_head, tmp_path, 4, "--no-wait", "--submission-id", job_id)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    wait_for(
        lambda: any(r.data.tags.get("ftray.trial_status") == "completed" for r in trial_runs(uri)),
        600,  # a bound, not a goal: the first trial took over 300 s once on a loaded 2-core CI
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
