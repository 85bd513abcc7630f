"""Load on one `mlflow server` backed by the local PostgreSQL (issue 11, item 7): 32
processes logging metrics at once lose none, and concurrent registrations of different
trials into one model name get unique versions with `champion` on the best."""

from __future__ import annotations

import json
import multiprocessing
import queue
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.e2e.postgres import USER, fresh_database, mlflow_server

pytestmark = pytest.mark.slow

LOGGERS = 32
STEPS = 20
METRICS = ("train_loss", "eval_loss", "trigger_score")
SCORES = (0.31, 0.87, 0.12, 0.55, 0.93, 0.24, 0.78, 0.46)
"""The objective value of each concurrently registered trial; the best is neither first nor last."""
NAME = "load-test"


def expected(worker: int, step: int, metric: int) -> float:
    return worker * 1000 + step + metric / 10


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server` on 127.0.0.1 with a fresh PostgreSQL database and proxied artifacts."""
    work = tmp_path_factory.mktemp("mlflow-load")
    with fresh_database("ftray_load") as database:
        # MLflow's default pool (5 connections + 10 overflow per worker) makes the 16th
        # concurrent request wait 30 s and then fail with 400, which clients do not retry:
        # the pool covers every concurrent writer (docs/security.md).
        pool = {
            "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "32",
            "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "8",
        }
        backend = f"postgresql://{USER}@127.0.0.1:5432/{database}"
        with mlflow_server(work, backend, timeout=180, env=pool) as uri:
            yield {"uri": uri, "work": work}


def log_metrics_at_once(uri: str, experiment_id: str, worker: int, barrier, results) -> None:
    """One process: wait for all the others, then log every step of its metrics."""
    from ftray.tracking.store import log_metrics

    client = MlflowClient(uri)
    run = client.create_run(experiment_id, run_name=f"logger-{worker}")
    barrier.wait(timeout=120)
    for step in range(1, STEPS + 1):
        values = {m: expected(worker, step, i) for i, m in enumerate(METRICS)}
        log_metrics(client, run.info.run_id, values, step=step)
    client.set_terminated(run.info.run_id)
    results.put((worker, run.info.run_id))


def register_at_once(uri: str, experiment_id: str, work: str, index: int, barrier, results):
    """One process: a trial run with a small adapter, registered into NAME with the others."""
    import numpy as np
    from safetensors.numpy import save_file

    from ftray.tracking.registry import Lineage, register_adapter

    client = MlflowClient(uri)
    run = client.create_run(experiment_id, run_name=f"trial-{index}")
    adapter = Path(work) / f"adapter-{index}"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    save_file(
        {"lora_A": np.full((4, 4), index, dtype=np.float32)}, adapter / "adapter_model.safetensors"
    )
    lineage = Lineage(
        base_model="tiny",
        base_revision="tiny-load",
        dataset_sha256="d" * 64,
        spec_sha256="s" * 64,
        objective="trigger_score",
        objective_value=SCORES[index],
        mode="max",
        trial_id=f"trial{index}",
        sweep_run_id="sweep",
        heldout_fingerprint="f" * 64,
    )
    barrier.wait(timeout=180)
    registration = register_adapter(client, NAME, run.info.run_id, adapter, lineage)
    client.set_terminated(run.info.run_id)
    results.put((index, run.info.run_id, registration.version, registration.created))


def run_all(target, count: int, *args) -> list:
    """`target(*args, i, barrier, results)` in `count` processes started together; what
    they put in `results`. Any process failing fails the test at once."""
    context = multiprocessing.get_context("fork")  # no re-import of mlflow per process
    barrier, results = context.Barrier(count), context.Queue()
    processes = [
        context.Process(target=target, args=(*args, i, barrier, results)) for i in range(count)
    ]
    for process in processes:
        process.start()
    collected = []
    try:
        while len(collected) < count:
            try:
                collected.append(results.get(timeout=1))
            except queue.Empty:
                failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                assert not failed, f"{len(failed)} of {count} processes failed (see above)"
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    return collected


def test_32_processes_logging_at_once_lose_no_metric(server: dict) -> None:
    client = MlflowClient(server["uri"])
    experiment_id = client.create_experiment("load-metrics")
    runs = run_all(log_metrics_at_once, LOGGERS, server["uri"], experiment_id)
    assert sorted(worker for worker, _ in runs) == list(range(LOGGERS))
    for worker, run_id in runs:
        for i, metric in enumerate(METRICS):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))
            assert history == [(s, expected(worker, s, i)) for s in range(1, STEPS + 1)]
    assert client.get_run(runs[0][1]).info.status == "FINISHED"


def test_concurrent_registrations_get_unique_versions_and_champion_on_the_best(
    server: dict,
) -> None:
    client = MlflowClient(server["uri"])
    experiment_id = client.create_experiment("load-registry")
    done = run_all(register_at_once, len(SCORES), server["uri"], experiment_id, str(server["work"]))
    versions = {index: version for index, _, version, _ in done}
    assert all(created for *_, created in done)
    assert sorted(int(v) for v in versions.values()) == list(range(1, len(SCORES) + 1))
    for _, run_id, version, _ in done:
        assert client.get_model_version(NAME, version).run_id == run_id
    best = max(range(len(SCORES)), key=SCORES.__getitem__)
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.version == versions[best]
    assert float(champion.tags["ftray.objective_value"]) == max(SCORES)
    assert [m.name for m in client.search_registered_models()] == [NAME], "the lock is released"
