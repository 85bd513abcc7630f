"""Several sweeps, one cluster: three `ftray sweep` drivers of three different specs (trigger,
pipeline, chat) run at the same time on one token-authenticated Ray head, recording into one
`mlflow server` on PostgreSQL, their Optuna studies in one PostgreSQL database and Ray Tune's
results under one folder. Each sweep ends with its own champion (from its own trials), its
own runs (its parent's children are exactly its trials, with its spec), and nothing of
another's: no foreign trial under its parent, in its Tune experiment or in its Optuna study.
The drivers leave the cluster as they found it: the head alive, no driver job running, no
actor alive, every CPU free. The trigger sweep trains the `tiny` model for real and registers
its champion; the pipeline and chat sweeps replay recorded curves (simulated trials, nothing
registered), so the three together fit a 2-core machine."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, SPECS
from tests.e2e.postgres import USER, fresh_database, mlflow_server
from tests.e2e.ray_helpers import VENV_BIN, token_head, wait_for

pytestmark = pytest.mark.slow

DRIVER_TIMEOUT_S = 600.0
"""A bound, not a goal: the three drivers took 1.5 to 2.5 minutes, head start included, on a
2-core machine doing other work."""


@dataclass(frozen=True)
class Sweep:
    """One driver's sweep: its spec, what it searches and how it is run."""

    spec: str
    name: str
    """The spec's `name`: its MLflow experiment and (real trials) its registered model."""
    task: str
    space: frozenset[str]
    sets: tuple[str, ...]
    real: bool
    num_trials: int = 2


def chat_curves(path: Path) -> Path:
    """Recorded-style curves for chat_tiny.yaml's space: the larger alpha and rate, the sooner
    the calls come right."""
    trials = []
    for alpha, rate, start in ((64, 1.5e-3, 3), (64, 6e-3, 2), (128, 1.5e-3, 2), (128, 6e-3, 1)):
        epochs = []
        for epoch in range(1, 7):
            score = min(1.0, max(0.0, (epoch - start + 1) * 0.3))
            epochs.append(
                {"chat_score": score, "train_loss": 2.0 - score, "eval_loss": 2.5 - score}
            )
        trials.append(
            {
                "config": {"lora.alpha": alpha, "train.learning_rate": rate},
                "seed": 0,
                "epochs": epochs,
            }
        )
    space = {
        "lora.alpha": {"choice": [64, 128]},
        "train.learning_rate": {"loguniform": [1.5e-3, 6.0e-3]},
    }
    path.write_text(json.dumps({"space": space, "epochs": 6, "trials": trials}))
    return path


def simulated(curves: Path, epochs: int, epoch_seconds: float) -> tuple[str, ...]:
    """The `--set`s of a simulated sweep replaying `curves`. Its epochs make it last longer
    than the real sweep: its driver prepares no base model, so it starts first, and it must
    still be running while the real one trains."""
    return (
        *("--set", "model.backend=simulated"),
        *("--set", f"model.simulation={{curves: {curves}, epoch_seconds: {epoch_seconds}}}"),
        *("--set", f"train.epochs={epochs}"),
        *("--set", "resources_per_trial.cpu=0.5"),
    )


def team(work: Path) -> list[Sweep]:
    """The three sweeps: each of its own spec, searching its own space."""
    return [
        Sweep(
            "trigger_tiny.yaml",
            "trigger-tiny",
            "trigger",
            frozenset({"lora.r", "train.learning_rate", "task.trigger_ratio"}),
            ("--set", "train.epochs=1", "--set", "resources_per_trial.cpu=1"),
            real=True,
        ),
        Sweep(
            "pipeline_tiny.yaml",
            "pipeline-tiny",
            "pipeline",
            frozenset({"lora.r", "train.learning_rate"}),
            simulated(ROOT / "bench" / "curves" / "pipeline_tiny.json", 6, 8.0),
            real=False,
        ),
        Sweep(
            "chat_tiny.yaml",
            "chat-tiny",
            "chat",
            frozenset({"lora.alpha", "train.learning_rate"}),
            simulated(chat_curves(work / "chat_curves.json"), 6, 8.0),
            real=False,
        ),
    ]


@pytest.fixture
def postgres_urls() -> Iterator[tuple[str, str]]:
    """(MLflow's database, Optuna's database): fresh, dropped afterwards."""
    with fresh_database() as mlflow_db, fresh_database() as optuna_db:
        yield tuple(f"postgresql://{USER}@127.0.0.1:5432/{name}" for name in (mlflow_db, optuna_db))


def start_driver(sweep: Sweep, work: Path, env: dict[str, str], *sets: str) -> subprocess.Popen:
    """`python -m ftray sweep` of `sweep` (more `--set`s after its own), in a folder of its
    own under `work`; its output in work/<name>.out and .err."""
    folder = work / sweep.name
    folder.mkdir()
    command = [
        sys.executable,
        "-m",
        "ftray",
        "sweep",
        str(SPECS / sweep.spec),
        *("--set", f"search.num_trials={sweep.num_trials}"),
        *("--set", "search.max_concurrent_trials=2"),
        *("--set", "search.scheduler=fifo"),
        *sweep.sets,
        *sets,
    ]
    return subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdout=(work / f"{sweep.name}.out").open("w"),
        stderr=(work / f"{sweep.name}.err").open("w"),
        start_new_session=True,
    )


def ray_list(head: dict, what: str) -> list[dict]:
    """`ray list <what>` of the head, every entry and field."""
    listed = subprocess.run(
        [f"{VENV_BIN}/ray", "list", what, "--address", head["address"], "--detail"]
        + ["--format", "json", "--limit", "10000"],
        env=head["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    return json.loads(listed.stdout)


def cpus_in_use(head: dict) -> str | None:
    """`ray status`'s CPU line (`0.0/8.0 CPU`), None while it shows none."""
    status = subprocess.run(
        [f"{VENV_BIN}/ray", "status", "--address", head["gcs"]],
        env=head["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r"([\d.]+)/([\d.]+) CPU", status.stdout)
    return found.group(0) if found else None


def left_in_session(session: int) -> list[str]:
    """The processes still running in the session `session` (a driver's: its pid)."""
    left = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getsid(process.pid) == session:
                left.append(f"{process.pid}: {' '.join(process.info['cmdline'] or [])[:200]}")
    return left


def leaderboard_first(out: str) -> str:
    """The trial in row 1 of the leaderboard a driver printed."""
    found = re.search(r"^1\s+(\S+)\s", out, re.MULTILINE)
    assert found, out[-3000:]
    return found.group(1)


def test_three_drivers_share_one_cluster_and_keep_their_own_sweeps(
    postgres_urls: tuple[str, str], tmp_path: Path
) -> None:
    import optuna

    mlflow_db, optuna_db = postgres_urls
    sweeps = team(tmp_path)
    tune_root = tmp_path / "ray_results"
    shared = ("--set", f"storage.optuna_url={optuna_db}", "--set", f"storage.tune_path={tune_root}")
    started = time.monotonic()
    with token_head(num_cpus=8) as head, mlflow_server(tmp_path, mlflow_db) as uri:
        env = {
            **head["env"],
            "RAY_ADDRESS": head["gcs"],
            "MLFLOW_TRACKING_URI": uri,
        }
        drivers: dict[str, subprocess.Popen] = {}
        try:
            for sweep in sweeps:
                drivers[sweep.name] = start_driver(sweep, tmp_path, env, *shared)
            deadline = time.monotonic() + DRIVER_TIMEOUT_S
            for driver in drivers.values():
                driver.wait(max(1.0, deadline - time.monotonic()))
        finally:
            for driver in drivers.values():
                if driver.poll() is None:
                    os.killpg(driver.pid, signal.SIGKILL)
                    driver.wait(30)
        outs = {name: (tmp_path / f"{name}.out").read_text() for name in drivers}
        errs = {name: (tmp_path / f"{name}.err").read_text() for name in drivers}
        for name, driver in drivers.items():
            assert driver.returncode == 0, f"{name}:\n{outs[name][-2000:]}\n{errs[name][-4000:]}"
            assert left_in_session(driver.pid) == [], f"{name} left processes behind"
        swept = time.monotonic() - started

        client = MlflowClient(uri)
        experiments = {s.name: client.get_experiment_by_name(s.name) for s in sweeps}
        assert all(experiments.values()), experiments
        ids = [e.experiment_id for e in experiments.values()]
        parents, trials = {}, {}
        for sweep in sweeps:
            runs = client.search_runs([experiments[sweep.name].experiment_id])
            (parent,) = [r for r in runs if r.data.tags.get("ftray.role") == "sweep"]
            parents[sweep.name] = parent
            assert parent.info.status == "FINISHED", (sweep.name, parent.info.status)
            assert parent.data.metrics["trials_completed"] == sweep.num_trials
            # Its children, looked for in every sweep's experiment: exactly its own trials.
            children = client.search_runs(
                ids, filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
            )
            own = [r for r in runs if r.data.tags.get("ftray.role") == "trial"]
            assert {r.info.run_id for r in children} == {r.info.run_id for r in own}
            assert len(own) == sweep.num_trials == len(runs) - 1, [r.info.run_name for r in runs]
            for run in own:
                assert run.info.status == "FINISHED", (sweep.name, run.info.run_name)
                assert run.data.tags["ftray.trial_status"] == "completed"
                assert run.data.params["name"] == sweep.name
                assert run.data.params["task.kind"] == sweep.task
                assert (run.data.params["model.backend"] == "simulated") is not sweep.real
            trials[sweep.name] = {r.data.tags["ftray.trial_id"]: r for r in own}
        all_trial_ids = [t for own in trials.values() for t in own]
        assert len(all_trial_ids) == len(set(all_trial_ids)), all_trial_ids
        # Every trial ran on the head's node: the drivers joined it, none started a Ray of its own.
        nodes = {r.data.tags.get("ftray.node_id") for own in trials.values() for r in own.values()}
        assert len(nodes) == 1 and None not in nodes, nodes

        # They ran at the same time: some moment lies within all three parent runs.
        latest_start = max(p.info.start_time for p in parents.values())
        earliest_end = min(p.info.end_time for p in parents.values())
        first = min(p.info.start_time for p in parents.values())
        spans = {
            n: f"{(p.info.start_time - first) / 1000:.0f}-{(p.info.end_time - first) / 1000:.0f} s"
            for n, p in parents.items()
        }
        assert latest_start < earliest_end, spans

        # Ray Tune: one experiment folder per sweep under the shared root, holding its trials.
        folders = {n: Path(p.data.tags["ftray.tune_experiment"]) for n, p in parents.items()}
        assert len(set(folders.values())) == 3
        assert {f.parent for f in folders.values()} == {tune_root}
        assert sorted(p.name for p in tune_root.iterdir() if p.is_dir()) == sorted(
            f.name for f in folders.values()
        )
        for sweep in sweeps:
            seen = []
            for params in folders[sweep.name].glob("*/params.json"):
                config = json.loads(params.read_text())
                assert set(config) == sweep.space, (sweep.name, config)
                reported = (params.parent / "result.json").read_text().splitlines()
                seen.append(json.loads(reported[0])["trial_id"])
            assert sorted(seen) == sorted(trials[sweep.name]), (sweep.name, seen)

        # Optuna: one study per sweep in the shared database, each with its trials only.
        studies = {s.study_name: s for s in optuna.get_all_study_summaries(optuna_db)}
        names = {n: p.data.tags["ftray.optuna_study"] for n, p in parents.items()}
        assert set(studies) == set(names.values()), sorted(studies)
        for sweep in sweeps:
            study = optuna.load_study(study_name=names[sweep.name], storage=optuna_db)
            assert len(study.trials) == sweep.num_trials
            assert all(t.state.name == "COMPLETE" for t in study.trials)
            assert all(set(t.params) == sweep.space for t in study.trials)
            recorded = sorted(
                tuple(float(r.data.params[k]) for k in sorted(sweep.space))
                for r in trials[sweep.name].values()
            )
            proposed = sorted(
                tuple(float(t.params[k]) for k in sorted(sweep.space)) for t in study.trials
            )
            assert all(
                math.isclose(a, b, rel_tol=1e-6)
                for r, p in zip(recorded, proposed, strict=True)
                for a, b in zip(r, p, strict=True)
            ), (sweep.name, recorded, proposed)

        # Champions: each sweep's best is one of its own trials, and only the real one registers.
        for sweep in sweeps:
            best = leaderboard_first(outs[sweep.name])
            assert best in trials[sweep.name], (sweep.name, best)
            if sweep.real:
                champion = client.get_model_version_by_alias(sweep.name, "champion")
                assert champion.version == "1"
                assert champion.run_id == trials[sweep.name][best].info.run_id
                assert f"registered models:/{sweep.name}/1" in outs[sweep.name]
            else:
                assert f"the best trial is {best}" in outs[sweep.name], outs[sweep.name][-2000:]
        registered = {m.name for m in client.search_registered_models()}
        assert registered == {s.name for s in sweeps if s.real}, registered

        # The cluster as the drivers found it: alive, no driver running, no actor, CPUs free.
        jobs = [j for j in ray_list(head, "jobs") if j["type"] == "DRIVER"]
        ours = [
            j for j in jobs if int(j["driver_info"]["pid"]) in {d.pid for d in drivers.values()}
        ]
        assert len(ours) == 3, jobs
        assert all(j["status"] == "SUCCEEDED" for j in jobs), jobs
        actors = ray_list(head, "actors")
        ours_ids = {j["job_id"] for j in ours}
        assert {a["job_id"] for a in actors} >= ours_ids, "each driver ran its trials here"
        assert [a for a in actors if a["state"] != "DEAD"] == [], actors
        wait_for(
            lambda: cpus_in_use(head) == "0.0/8.0 CPU", 60, "the head answering, every CPU free"
        )
    print(
        f"three sweeps took {swept:.0f} s (parent runs: {spans}); "
        f"the whole test {time.monotonic() - started:.0f} s"
    )
