"""ftray at cluster scale, on one machine: a sweep of simulated trials (`model.backend:
simulated`, curves recorded from real trials) submitted with `ray job submit` to a
token-authenticated Ray head that declares the GPUs, tracked by an `mlflow server` on the
local PostgreSQL, with the Optuna study in PostgreSQL too, as a team's cluster runs it.

Only the training inside each trial is simulated (each epoch waits `--epoch-seconds`);
the driver, Ray Tune, Optuna, ASHA, the trainable, checkpoints, the MLflow server and its
database, the leaderboard and the plots are the real ones, at full size.

    .venv/bin/python bench/scale.py --trials 200 --concurrent 32 --epochs 5 --epoch-seconds 1
    .venv/bin/python bench/scale.py --trials 1000 --concurrent 64 --epochs 5 --epoch-seconds 2
    .venv/bin/python bench/scale.py --nodes 8 --preempt 2

Prints one line `scale: {json}` with
- `wall_s`: the trials phase, first trial started to last trial ended (MLflow's runs);
- `fixed_s`: the rest of the job's wall time (upload, driver start-up, wrap-up);
- `ideal_s`: the epochs the trials ran x `--epoch-seconds` / `--concurrent`;
- the driver's own figures from its parent run: `driver_cpu_s`, `driver_peak_rss_mb`,
  `suggest_ms_p50`, `suggest_ms_at_end`, `mlflow_log_ms_p99`, and `plots_s`;
- `leaderboard_s`: rendering the leaderboard over the sweep's runs (as `ftray leaderboard`
  does, its imports aside);
- `metrics_lost`: epochs in Tune's results minus epochs in MLflow, over all trials;
- `runs_running`: runs left RUNNING;
- `trials_restarted_from_1`: trials that ran their first epoch twice (with `--preempt`,
  worker nodes are killed mid-sweep, as spot instances vanish, and as many added later);
and last `scale_overhead: <wall_s / ideal_s>`. Needs PostgreSQL on 127.0.0.1:5432 (trust
authentication), and a machine whose memory holds `--concurrent` Ray workers (about 150 MB
each).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SPEC = "search_spaces/trigger_tiny.yaml"
CURVES = "../bench/curves/trigger_tiny.json"  # relative to the spec
PG = {"host": "127.0.0.1", "port": 5432, "user": os.environ.get("PGUSER", "postgres")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Any, timeout: float, what: str, poll: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


@contextlib.contextmanager
def databases(*names: str) -> Iterator[list[str]]:
    """Fresh PostgreSQL databases, dropped on exit; their URLs."""
    import psycopg

    suffix = secrets.token_hex(4)
    made = [f"ftray_scale_{name}_{suffix}" for name in names]
    try:
        admin = psycopg.connect(dbname="postgres", autocommit=True, **PG)
    except psycopg.OperationalError as exc:
        raise SystemExit(f"bench/scale.py needs PostgreSQL on 127.0.0.1:5432 ({exc})") from None
    try:
        with admin.cursor() as cursor:
            for name in made:
                cursor.execute(f'CREATE DATABASE "{name}"')
        yield [f"postgresql://{PG['user']}@127.0.0.1:5432/{name}" for name in made]
    finally:
        with admin.cursor() as cursor:
            for name in made:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextlib.contextmanager
def mlflow_server(work: Path, backend_uri: str) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 over `backend_uri`, artifacts proxied into `work`."""
    import requests

    port = free_port()
    process = subprocess.Popen(
        [
            str(VENV_BIN / "mlflow"),
            "server",
            *("--host", "127.0.0.1", "--port", str(port)),
            *("--backend-store-uri", backend_uri),
            *("--serve-artifacts", "--artifacts-destination", (work / "artifacts").as_uri()),
        ],
        cwd=work,
        stdout=(work / "mlflow-server.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def healthy() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok
        except requests.RequestException:
            return False

    try:
        wait_for(healthy, 180, "the mlflow server")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def port_flags() -> list[str]:
    """Ports of its own for a Ray node (two nodes on one machine would share the defaults)."""
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


class Cluster:
    """A token-authenticated Ray head on 127.0.0.1 (dashboard and job server included) and
    worker nodes declaring GPUs, all on this machine under one temp folder; stopped whole."""

    def __init__(self, nodes: int, gpus: int) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="ftray-scale-", dir="/tmp"))
        self.port, self.dashboard = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard}"
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.nodes = nodes
        self.per_node = math.ceil(gpus / nodes)
        self.workers: list[int] = []  # the worker nodes' node-manager ports

    def ray(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(VENV_BIN / "ray"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise SystemExit(f"ray {args[0]} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done

    def start(self) -> None:
        # One node: the head holds the GPUs. Several: the head holds none, as on a cluster.
        on_head = self.per_node if self.nodes == 1 else 0
        self.ray(
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard}",
            f"--num-cpus={on_head}",
            f"--num-gpus={on_head}",
            "--include-dashboard=true",
            "--disable-usage-stats",
            f"--temp-dir={self.temp}",
            *port_flags(),
        )
        for _ in range(self.nodes if self.nodes > 1 else 0):
            self.add_node()

        def jobs_answer() -> bool:
            probe = subprocess.run(
                [str(VENV_BIN / "ray"), "job", "list", "--address", self.address],
                env=self.env,
                capture_output=True,
                timeout=120,
            )
            return probe.returncode == 0

        wait_for(jobs_answer, 180, "the head's job server", poll=3)

    def add_node(self) -> None:
        manager = free_port()
        self.ray(
            "start",
            f"--address=127.0.0.1:{self.port}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.per_node}",
            f"--num-gpus={self.per_node}",
            "--disable-usage-stats",
            # Each node its own folder, as each machine of a cluster has its own disk: nodes
            # sharing one would share runtime_resources/, and a node starting or dying there
            # can delete the job's working_dir from under the running driver.
            f"--temp-dir={self.temp / f'node-{manager}'}",
            f"--node-manager-port={manager}",
            *port_flags(),
        )
        self.workers.append(manager)

    def preempt(self, rng: random.Random) -> None:
        """Kill a worker node at once, as a spot instance vanishes: its raylet and every
        process under it (the trials' workers), no draining."""
        import psutil

        manager = self.workers.pop(rng.randrange(len(self.workers)))
        doomed = []
        for process in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if f"--node_manager_port={manager}" in (process.info["cmdline"] or []):
                    doomed += [process, *process.children(recursive=True)]
        for process in doomed:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(doomed, timeout=20)

    def stop(self) -> None:
        import psutil

        mine = []
        for process in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if str(self.temp) in " ".join(process.info["cmdline"] or []):
                    mine += [process, *process.children(recursive=True)]
        for process in mine:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(mine, timeout=20)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


def overrides(args: argparse.Namespace, tune_path: Path, optuna_url: str) -> list[str]:
    sets = {
        "model.backend": "simulated",
        "model.simulation": f"{{curves: {CURVES}, epoch_seconds: {args.epoch_seconds}}}",
        "search.num_trials": args.trials,
        "search.max_concurrent_trials": args.concurrent,
        "search.scheduler": args.scheduler,
        "train.epochs": args.epochs,
        "resources_per_trial": "{cpu: 1, gpu: 1}",
        "storage.tune_path": str(tune_path),
        "storage.optuna_url": optuna_url,
    }
    return [f"{key}={value}" for key, value in sets.items()]


def run_job(
    cluster: Cluster,
    uri: str,
    sets: list[str],
    work: Path,
    preempt: int = 0,
    concurrent: int = 1,
) -> dict[str, Any]:
    """Submit the sweep with cluster/submit.sh (`preempt` worker nodes killed while it runs,
    as many added later), wait for the job to end; Ray's record of it."""
    command = [str(ROOT / "cluster" / "submit.sh"), SPEC]
    for item in sets:
        command += ["--set", item]
    env = {**cluster.env, "RAY_ADDRESS": cluster.address, "MLFLOW_TRACKING_URI": uri}
    env["FTRAY_NO_WAIT"] = "1"
    submitted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if submitted.returncode != 0:
        raise SystemExit(f"submit.sh failed:\n{submitted.stdout[-2000:]}{submitted.stderr[-2000:]}")

    def job() -> dict[str, Any]:
        listed = cluster.ray(
            "list", "jobs", "--address", cluster.address, "--detail", "--format", "json"
        )
        (found,) = [j for j in json.loads(listed.stdout) if "ftray sweep" in j["entrypoint"]]
        return found

    if preempt:
        preempt_nodes(cluster, uri, preempt, concurrent, job)
    wait_for(lambda: job()["status"] in ("SUCCEEDED", "FAILED", "STOPPED"), 24 * 3600, "the job", 5)
    record = job()
    logs = cluster.ray("job", "logs", "--address", cluster.address, record["submission_id"])
    (work / "job.log").write_text(logs.stdout)
    if record["status"] != "SUCCEEDED":
        raise SystemExit(f"the sweep's job {record['status']}:\n{logs.stdout[-4000:]}")
    return record


def preempt_nodes(
    cluster: Cluster, uri: str, count: int, concurrent: int, job: Any, seed: int = 0
) -> None:
    """Once the trials run, kill `count` worker nodes at random moments, then add as many."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)

    def running() -> bool:
        experiment = client.get_experiment_by_name("trigger-tiny")
        if experiment is None:
            return False
        found = client.search_runs(
            [experiment.experiment_id], "tags.`ftray.role` = 'trial'", max_results=concurrent
        )
        return len(found) >= concurrent or job()["status"] != "RUNNING"

    wait_for(running, 3600, "the trials to start", 2)
    rng = random.Random(seed)
    for _ in range(count):
        time.sleep(rng.uniform(2.0, 10.0))
        cluster.preempt(rng)
        print(f"killed a worker node ({len(cluster.workers)} left)", flush=True)
    time.sleep(rng.uniform(5.0, 15.0))
    for _ in range(count):
        cluster.add_node()
    print(f"added {count} worker node(s)", flush=True)


def all_runs(client: Any, experiment_id: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def measure(
    args: argparse.Namespace, uri: str, job: dict[str, Any], tune_path: Path, sets: list[str]
) -> dict[str, Any]:
    from mlflow import MlflowClient

    from ftray.config import load_spec
    from ftray.tracking.leaderboard import render_leaderboard

    client = MlflowClient(uri)
    spec = load_spec(ROOT / SPEC, sets)
    experiment = client.get_experiment_by_name(spec.name)
    runs = all_runs(client, experiment.experiment_id)
    (parent,) = [r for r in runs if r.data.tags.get("ftray.role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("ftray.role") == "trial"]
    wall = (max(r.info.end_time for r in trials) - min(r.info.start_time for r in trials)) / 1000
    job_wall = (job["end_time"] - job["start_time"]) / 1000
    # Every epoch Tune recorded, against every epoch MLflow holds.
    tune_epochs: dict[str, list[int]] = {}
    for result in tune_path.glob("*/*/result.json"):
        for line in result.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                tune_epochs.setdefault(row["trial_id"], []).append(int(row["epoch"]))
    assert spec.search is not None
    objective = spec.search.primary.metric  # reported every epoch
    mlflow_epochs = sum(len(client.get_metric_history(r.info.run_id, objective)) for r in trials)
    started = time.monotonic()
    render_leaderboard(client, spec)
    leaderboard_s = time.monotonic() - started
    metrics = parent.data.metrics
    epochs_run = sum(len(set(e)) for e in tune_epochs.values())
    ideal = epochs_run * args.epoch_seconds / args.concurrent
    statuses = [r.data.tags.get("ftray.trial_status") for r in trials]
    return {
        "trials": len(trials),
        "concurrent": args.concurrent,
        "epochs": args.epochs,
        "epoch_seconds": args.epoch_seconds,
        "scheduler": args.scheduler,
        "nodes": args.nodes,
        "completed": statuses.count("completed"),
        "pruned": statuses.count("pruned"),
        "failed": statuses.count("failed"),
        "epochs_run": epochs_run,
        "wall_s": round(wall, 1),
        "fixed_s": round(job_wall - wall, 1),
        "ideal_s": round(ideal, 1),
        "driver_cpu_s": metrics.get("driver/cpu_s"),
        "driver_peak_rss_mb": metrics.get("driver/peak_rss_mb"),
        "suggest_ms_p50": metrics.get("driver/suggest_ms_p50"),
        "suggest_ms_at_end": metrics.get("driver/suggest_ms_at_end"),
        "mlflow_log_ms_p99": metrics.get("driver/mlflow_log_ms_p99"),
        "leaderboard_s": round(leaderboard_s, 2),
        "plots_s": metrics.get("time/plots"),
        "metrics_lost": sum(len(e) for e in tune_epochs.values()) - mlflow_epochs,
        "runs_running": sum(r.info.status == "RUNNING" for r in runs),
        "trials_restarted_from_1": sum(e.count(1) > 1 for e in tune_epochs.values()),
        # The driver's own phases (seconds), where fixed_s goes.
        "phases": {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("time/")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=32, help="trials at a time (GPUs)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--epoch-seconds", type=float, default=1.0)
    parser.add_argument("--scheduler", choices=["asha", "fifo"], default="asha")
    parser.add_argument("--nodes", type=int, default=1, help="worker nodes sharing the GPUs")
    parser.add_argument(
        "--preempt", type=int, default=0, help="worker nodes killed mid-sweep (and added later)"
    )
    parser.add_argument("--keep", type=Path, help="copy the job's log and Tune's results here")
    args = parser.parse_args()
    if args.preempt and args.preempt >= args.nodes:
        parser.error("--preempt must leave a worker node: give --nodes above it")

    work = Path(tempfile.mkdtemp(prefix="ftray-scale-work-"))
    tune_path = work / "ray_results"
    cluster = Cluster(args.nodes, args.concurrent)
    try:
        with (
            databases("mlflow", "optuna") as (mlflow_db, optuna_db),
            mlflow_server(work, mlflow_db) as uri,
        ):
            started = time.monotonic()
            cluster.start()
            print(f"Ray up in {time.monotonic() - started:.0f} s; submitting", flush=True)
            sets = overrides(args, tune_path, optuna_db)
            job = run_job(cluster, uri, sets, work, args.preempt, args.concurrent)
            figures = measure(args, uri, job, tune_path, sets)
    finally:
        cluster.stop()
        if args.keep:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    print("scale: " + json.dumps(figures))
    print(f"scale_overhead: {figures['wall_s'] / figures['ideal_s']:.2f}")


if __name__ == "__main__":
    main()
