"""Helpers shared by the e2e tests that start Ray processes of their own."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from tests.conftest import sqlite_store

VENV_BIN = str(Path(sys.executable).parent)
SWEEP_ARGS = ["--set", "train.epochs=2", "--set", "search.scheduler=fifo"]


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


def short_ray_temp() -> Path:
    """A fresh folder for a Ray node's --temp-dir: Ray's socket paths under it must stay
    below 108 bytes, which a deep pytest tmp path can exceed."""
    return Path(tempfile.mkdtemp(prefix="ftray-ray-", dir="/tmp"))
