"""`storage.tune_path` on a real two-node Ray cluster whose worker does not see the head's
disk: the worker runs in its own mount namespace with an empty tmpfs over the folder the
head writes to, as a worker machine with its own disk would."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SPECS, run_cli, sqlite_store
from tests.e2e.ray_helpers import (
    VENV_BIN,
    all_runs,
    assert_sweep_finished_once,
    free_port,
    node_port_flags,
    short_ray_temp,
    stop_nodes,
    trial_runs,
    wait_for,
)

pytestmark = pytest.mark.slow

SWEEP = [
    "sweep",
    str(SPECS / "trigger_tiny.yaml"),
    "--set",
    "search.num_trials=2",
    "--set",
    "train.epochs=1",
    "--set",
    "search.scheduler=fifo",
    "--set",
    "search.max_concurrent_trials=1",
]


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


class TwoNodeCluster:
    """A head with no CPUs (so every trial runs on the worker) and, once added, a worker
    that sees an empty folder where the head sees `hidden`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hidden = root / "head-only"
        self.shared = root / "shared"
        self.hidden.mkdir()
        self.shared.mkdir()
        self.port = free_port()
        # Ray's socket paths must stay under 108 bytes: a short folder of its own.
        self.temp = short_ray_temp()
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),
            "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        }
        self.worker_started = False

    def ray(self, *args: str, prefix: tuple[str, ...] = ()) -> None:
        result = subprocess.run(
            [*prefix, f"{VENV_BIN}/ray", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    def start_head(self) -> None:
        self.ray(
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.port}",
            "--num-cpus=0",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={self.temp}",
            *node_port_flags(),
        )

    def add_blind_worker(self) -> None:
        """`ray start` inside a new mount namespace that hides `hidden` behind a tmpfs."""
        if self.worker_started:
            return
        start = " ".join(
            [
                f"{VENV_BIN}/ray",
                "start",
                f"--address=127.0.0.1:{self.port}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=2",
                "--num-gpus=0",
                "--disable-usage-stats",
                f"--temp-dir={self.temp}",
                *node_port_flags(),
            ]
        )
        script = f"mount -t tmpfs ftray-test-blind {self.hidden} && exec {start}"
        self.ray_in_namespace(script)
        self.worker_started = True

    def ray_in_namespace(self, script: str) -> None:
        result = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    def sweep_env(self, work: Path) -> dict[str, str]:
        return {
            "RAY_ADDRESS": f"127.0.0.1:{self.port}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.env["RAY_AUTH_TOKEN"],
            "MLFLOW_TRACKING_URI": sqlite_store(work),
        }

    def stop(self) -> None:
        stop_nodes(self.temp)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    if not _can_unshare():
        pytest.skip("needs `unshare -m` (a mount namespace) to hide a folder from one node")
    nodes = TwoNodeCluster(tmp_path_factory.mktemp("two-nodes"))
    nodes.start_head()
    try:
        yield nodes
    finally:
        nodes.stop()


def test_the_blind_worker_really_does_not_see_the_folder(cluster: TwoNodeCluster) -> None:
    (cluster.hidden / "seen-by-head").write_text("x")
    probe = f"mount -t tmpfs probe {cluster.hidden} && test ! -e {cluster.hidden}/seen-by-head"
    cluster.ray_in_namespace(probe)
    assert (cluster.hidden / "seen-by-head").exists()


def test_a_worker_joining_later_is_checked_and_stops_the_sweep(
    cluster: TwoNodeCluster, tmp_path: Path
) -> None:
    """The head starts alone (an autoscaling cluster with no workers yet): ftray warns, and
    when a worker that cannot see the folder joins, the sweep stops with exit 2."""
    log = tmp_path / "sweep.err"
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ftray",
            *SWEEP,
            "--set",
            f"storage.tune_path={cluster.hidden / 'joined' / 'ray_results'}",
        ],
        cwd=tmp_path,
        env={**os.environ, **cluster.sweep_env(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        wait_for(lambda: "one node now" in log.read_text(), 120, "the one-node warning")
        cluster.add_blind_worker()
        driver.wait(240)
    finally:
        if driver.poll() is None:
            driver.kill()
    err = log.read_text()
    assert driver.returncode == 2, err[-3000:]
    assert "is not visible from node" in err and "Traceback" not in err, err[-3000:]
    uri = cluster.sweep_env(tmp_path)["MLFLOW_TRACKING_URI"]
    # The check finds the worker before Tune starts a trial on it (no trial run at all in 3
    # runs of this test), so the sweep's own run records the stop; a trial that did start
    # first would be FAILED too, never completed or pruned. The parent keeps the list from
    # being empty, which would make the check say nothing.
    runs = all_runs(uri)
    (parent,) = [r for r in runs if r.data.tags.get("ftray.role") == "sweep"]
    assert parent.info.status == "FAILED"
    assert all(r.info.status == "FAILED" for r in runs), [
        (r.info.status, r.data.tags) for r in runs
    ]


def test_a_local_folder_the_worker_cannot_see_is_refused_before_any_trial(
    cluster: TwoNodeCluster, tmp_path: Path
) -> None:
    cluster.add_blind_worker()
    result = run_cli(
        *SWEEP,
        "--set",
        f"storage.tune_path={cluster.hidden / 'refused' / 'ray_results'}",
        cwd=tmp_path,
        env=cluster.sweep_env(tmp_path),
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "storage.tune_path" in errors[0] and "is not visible from node" in errors[0]
    assert "s3://" in errors[0] and "Traceback" not in result.stderr
    assert trial_runs(cluster.sweep_env(tmp_path)["MLFLOW_TRACKING_URI"]) == []
    assert not list((cluster.hidden / "refused").rglob("params.json")), "no trial ran"


def test_a_folder_every_node_sees_gives_a_finished_sweep(
    cluster: TwoNodeCluster, tmp_path: Path
) -> None:
    cluster.add_blind_worker()
    result = run_cli(
        *SWEEP,
        "--set",
        f"storage.tune_path={cluster.shared / 'ray_results'}",
        cwd=tmp_path,
        env=cluster.sweep_env(tmp_path),
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "visible from all 2 nodes" in result.stderr
    uri = cluster.sweep_env(tmp_path)["MLFLOW_TRACKING_URI"]
    assert_sweep_finished_once(uri, 2)
    assert MlflowClient(uri).get_model_version_by_alias("trigger-tiny", "champion")
