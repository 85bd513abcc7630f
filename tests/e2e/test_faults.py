"""Trials that fail: one that raises, losses that diverge, every trial failing, and trials
that wait for resources the cluster cannot give."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SPECS, run_cli, sqlite_store
from tests.e2e.ray_helpers import all_runs, free_port, trial_runs

pytestmark = pytest.mark.slow

DIVERGING_LR = "10000.0"  # the tiny model's loss is NaN from the first step


def optuna_states(url: str, study_name: str) -> list[str]:
    import optuna

    study = optuna.load_study(study_name=study_name, storage=url)
    return sorted(trial.state.name for trial in study.trials)


def sweep_parent(uri: str):
    (parent,) = [r for r in all_runs(uri) if r.data.tags.get("ftray.role") == "sweep"]
    return parent


def registered_names(uri: str) -> list[str]:
    return [m.name for m in MlflowClient(uri).search_registered_models()]


def test_a_trial_that_raises_fails_alone_and_the_sweep_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray
    from ray.tune import ExperimentAnalysis

    from ftray.config import load_spec
    from ftray.sweep import runner
    from ftray.sweep.space import prepare_sweep
    from ftray.tracking.leaderboard import render_leaderboard

    uri = sqlite_store(tmp_path)
    optuna_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name in ("TUNE_GLOBAL_CHECKPOINT_S", "RAY_AIR_NEW_OUTPUT"):
        monkeypatch.setenv(name, os.environ.get(name, "0" if "AIR" in name else "2"))
    spec = load_spec(
        SPECS / "trigger_tiny.yaml",
        [
            "search.num_trials=3",
            "search.max_concurrent_trials=1",
            "train.epochs=1",
            "search.scheduler=fifo",
            f"storage.optuna_url={optuna_url}",
            f"storage.tune_path={tmp_path / 'ray_results'}",
        ],
    )
    task = prepare_sweep(spec)

    # The first trial to start raises, again on each of its retries; the others train. The
    # wrapper travels to the Ray worker by value (cloudpickle), so it uses nothing of this
    # module.
    real = runner.make_trainable_for
    flag = str(tmp_path / "first-trial-raised")

    def failing_first(spec, finished=None, split=None):
        inner = real(spec, finished, split)

        def run_trial(config):
            import os

            from ray import tune

            me = tune.get_context().get_trial_id()
            try:
                handle = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(handle, me.encode())
                os.close(handle)
            except FileExistsError:
                with open(flag) as chosen:
                    if chosen.read() != me:
                        return inner(config)
            raise RuntimeError("injected trial failure")

        run_trial._resources = inner._resources
        return run_trial

    monkeypatch.setattr(runner, "make_trainable_for", failing_first)
    try:
        result = runner.run_sweep(spec, task)
    finally:
        ray.shutdown()

    # Ray Tune: one trial errored, the others terminated normally.
    statuses = sorted(t.status for t in ExperimentAnalysis(result.experiment_path).trials)
    assert statuses == ["ERROR", "TERMINATED", "TERMINATED"]
    # Optuna: the failed trial is FAIL in the study, never a completed value.
    parent = sweep_parent(uri)
    assert optuna_states(optuna_url, parent.data.tags["ftray.optuna_study"]) == [
        "COMPLETE",
        "COMPLETE",
        "FAIL",
    ]
    # MLflow: the child run is FAILED with the error's last line; the sweep finished.
    runs = trial_runs(uri)
    failed = [r for r in runs if r.data.tags["ftray.trial_status"] == "failed"]
    assert len(runs) == 3 and len(failed) == 1, [r.data.tags for r in runs]
    (bad,) = failed
    assert bad.info.status == "FAILED"
    assert bad.data.tags["ftray.error"] == "RuntimeError: injected trial failure"
    # Retried search.max_failures (default 2) times before it counted as failed.
    assert bad.data.tags["ftray.retries"] == "2"
    assert all(
        r.info.status == "FINISHED" and r.data.tags["ftray.trial_status"] == "completed"
        for r in runs
        if r is not bad
    )
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_failed"] == 1
    assert result.registration is not None
    version = MlflowClient(uri).get_model_version("trigger-tiny", result.registration.version)
    assert version.run_id != bad.info.run_id
    # The leaderboard lists it last, with its cause.
    board = render_leaderboard(MlflowClient(uri), spec)
    assert board is not None
    rows = board.splitlines()[3:6]
    assert rows[-1].split()[2] == "failed", board
    trial_id = bad.data.tags["ftray.trial_id"]
    assert f"failed: trial {trial_id}: RuntimeError: injected trial failure" in board


def diverging_spec(tmp_path: Path) -> Path:
    """trigger_tiny without the learning-rate dimension (so --set fixes it)."""
    text = (
        (SPECS / "trigger_tiny.yaml")
        .read_text()
        .replace("../datasets", str(SPECS.parent / "datasets"))
    )
    text = text.replace("    train.learning_rate: {loguniform: [1.0e-3, 1.0e-2]}\n", "")
    assert "train.learning_rate: {" not in text
    path = tmp_path / "diverging.yaml"
    path.write_text(text)
    return path


def test_a_diverging_loss_fails_every_trial_and_the_sweep(tmp_path: Path) -> None:
    uri = sqlite_store(tmp_path)
    optuna_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = run_cli(
        "sweep",
        str(diverging_spec(tmp_path)),
        *("--set", f"train.learning_rate={DIVERGING_LR}"),
        *("--set", "search.num_trials=2", "--set", "train.epochs=2"),
        *("--set", "search.scheduler=fifo", "--set", f"storage.optuna_url={optuna_url}"),
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert result.returncode == 1, result.stderr[-4000:]
    assert "error: all 2 trials failed; nothing registered" in result.stderr
    causes = [line for line in result.stderr.splitlines() if "error: trial failure:" in line]
    assert len(causes) == 1 and causes[0].endswith("(2 trials)"), causes
    assert "train_loss is nan at step" in causes[0] and "learning_rate=10000" in causes[0]
    # The leaderboard still prints, with both trials failed.
    assert result.stdout.count(": train_loss is nan") == 2, result.stdout

    runs = trial_runs(uri)
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FAILED" and run.data.tags["ftray.trial_status"] == "failed"
        assert "train_loss is nan" in run.data.tags["ftray.error"]
        assert "trigger_score" not in run.data.metrics, "a diverged epoch is never reported"
    parent = sweep_parent(uri)
    assert parent.info.status == "FAILED"
    assert (
        parent.data.metrics["trials_failed"] == 2 and parent.data.metrics["trials_completed"] == 0
    )
    assert registered_names(uri) == []
    assert optuna_states(optuna_url, parent.data.tags["ftray.optuna_study"]) == ["FAIL", "FAIL"]


def test_train_with_a_diverging_loss_exits_1_without_a_traceback(tmp_path: Path) -> None:
    result = run_cli(
        "train",
        str(SPECS / "trigger_tiny.yaml"),
        *("--set", f"train.learning_rate={DIVERGING_LR}", "--out", str(tmp_path / "out")),
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: train_loss is nan at step"), errors
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_trials_waiting_for_resources_stop_the_sweep_after_pending_timeout(
    tmp_path: Path,
) -> None:
    from ray.cluster_utils import Cluster

    # A cluster of one CPU node: a trial asking for a GPU waits for a node that never comes.
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "gcs_server_port": free_port()}
    )
    uri = sqlite_store(tmp_path)
    try:
        cluster.wait_for_nodes()
        started = time.monotonic()
        result = run_cli(
            "sweep",
            str(SPECS / "trigger_tiny.yaml"),
            *("--set", "search.num_trials=2", "--set", "train.epochs=1"),
            *("--set", "resources_per_trial.gpu=1", "--set", "search.pending_timeout=5"),
            cwd=tmp_path,
            env={"MLFLOW_TRACKING_URI": uri, "RAY_ADDRESS": cluster.address},
            timeout=300,
        )
        elapsed = time.monotonic() - started
    finally:
        cluster.shutdown()
    assert result.returncode == 1, result.stderr[-4000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("[ftray] warning:")]
    assert any("missing GPU 1 (the largest node has 0)" in line for line in warnings), warnings
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: no trial could start for "), result.stderr[-3000:]
    assert "search.pending_timeout = 5 s" in error and "GPU 1" in error
    # Bounded by the pending timeout, not by run_cli's 300 s (loose: CI runs tests side by side).
    assert elapsed < 240, f"took {elapsed:.0f}s"
    parent = sweep_parent(uri)
    assert parent.info.status == "FAILED"
    assert all(r.info.status != "RUNNING" for r in all_runs(uri))
    assert registered_names(uri) == []
