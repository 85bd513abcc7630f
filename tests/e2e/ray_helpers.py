"""Helpers shared by the e2e tests that start Ray processes of their own."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from mlflow import MlflowClient

from tests.conftest import sqlite_store

VENV_BIN = str(Path(sys.executable).parent)
# One trial at a time: each trial running beside another costs a worker process of its own
# (about 10 CPU-seconds of imports), and these tests are about the sweep, not concurrency.
SWEEP_ARGS = [
    *("--set", "train.epochs=2"),
    *("--set", "search.scheduler=fifo"),
    *("--set", "search.max_concurrent_trials=1"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sweep_env(work: Path, **extra: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": sqlite_store(work), **extra}


def trial_runs(uri: str, name: str = "trigger-tiny") -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    return client.search_runs(
        [experiment.experiment_id], filter_string="tags.`ftray.role` = 'trial'"
    )


def all_runs(uri: str, name: str = "trigger-tiny") -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def assert_sweep_finished_once(uri: str, num_trials: int) -> list:
    """num_trials trials finished, each once; nothing RUNNING. Runs a dead driver had just
    opened for trials Tune never recorded stay behind as KILLED orphans."""
    runs = trial_runs(uri)
    finished = [r for r in runs if r.data.tags["ftray.trial_status"] in ("completed", "pruned")]
    trial_ids = [r.data.tags["ftray.trial_id"] for r in runs]
    assert len(trial_ids) == len(set(trial_ids)), trial_ids
    assert len(finished) == num_trials, [
        (r.data.tags["ftray.trial_id"], r.data.tags["ftray.trial_status"]) for r in runs
    ]
    assert all(r.info.status == "FINISHED" for r in finished)
    orphans = [r for r in runs if r not in finished]
    assert all(
        r.info.status == "KILLED" and r.data.tags["ftray.trial_status"] == "killed" for r in orphans
    )
    assert all(r.info.status != "RUNNING" for r in all_runs(uri)), [
        (r.info.run_name, r.info.status) for r in all_runs(uri)
    ]
    return finished


def start_driver(args: list[str], work: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`python -m ftray ARGS` in its own session in `work`, stdout and stderr to `log`
    (stop it, and the Ray it started, with `kill_local_ray_of`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ftray", *args],
        cwd=work,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_local_ray_of(driver: subprocess.Popen) -> None:
    """Stop the local Ray a killed driver started (its session name ends with the driver's pid)."""
    if driver.poll() is None:
        driver.kill()
    pattern = f"session_[0-9_-]+_{driver.pid}( |/|$)"
    subprocess.run(["pkill", "-9", "-f", pattern], check=False)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(driver.pid, signal.SIGKILL)
    wait_for(
        lambda: subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode != 0,
        60,
        "the killed driver's Ray to stop",
    )


def node_port_flags() -> list[str]:
    """`ray start` flags giving a node ports of its own: Ray's defaults (52365 for the
    dashboard agent...) may be taken, and two nodes on one machine would share them."""
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


RAY_TEMPS: list[Path] = []
"""The folders `short_ray_temp` made in this test process: besides RAY_TMPDIR, where the Rays
this process started live, and where tests/e2e/conftest.py looks for any left running."""


def short_ray_temp() -> Path:
    """A fresh folder for a Ray node's --temp-dir: Ray's socket paths under it must stay
    below 108 bytes, which a deep pytest tmp path can exceed."""
    folder = Path(tempfile.mkdtemp(prefix="ftray-ray-", dir="/tmp"))
    RAY_TEMPS.append(folder)
    return folder


def processes_of(temp: Path) -> list[psutil.Process]:
    """The processes of the Ray node(s) whose --temp-dir is `temp`, and their children (Ray's
    workers rename themselves `ray::...`, so only their raylet's command line names `temp`)."""
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if str(temp) in " ".join(process.info["cmdline"] or []):
                found[process.pid] = process
                found.update({c.pid: c for c in process.children(recursive=True)})
    return list(found.values())


def stop_nodes(temp: Path) -> None:
    """Stop only the Ray nodes started with --temp-dir=`temp`: `ray stop` would stop every Ray
    on this machine, other tests' included."""
    processes = processes_of(temp)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=20)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=20)


@contextlib.contextmanager
def token_head(num_cpus: int = 2) -> Iterator[dict]:
    """`ray start --head` on 127.0.0.1 with token authentication, `num_cpus` CPUs, a dashboard
    (for `ray job`) and a temp folder of its own; only this head is stopped afterwards. Yields
    its dashboard `address`, its GCS address `gcs` (what a driver's RAY_ADDRESS names), the
    `env` (token included) for `ray` commands, the `token` and the `temp` folder."""
    temp = short_ray_temp()
    dashboard = free_port()
    gcs = f"127.0.0.1:{free_port()}"
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
    }
    head = {
        "address": f"http://127.0.0.1:{dashboard}",
        "gcs": gcs,
        "env": env,
        "token": token,
        "temp": temp,
    }
    try:
        start = subprocess.run(
            [
                f"{VENV_BIN}/ray",
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={gcs.rsplit(':', 1)[1]}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                f"--num-cpus={num_cpus}",
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
            # The head answers before its job agent is up ("No available agent to submit job").
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
        stop_nodes(temp)
        shutil.rmtree(temp, ignore_errors=True)
