"""A real sweep with two objectives and a select rule: the Pareto front is computed,
tagged, plotted and shown; the registered version meets the rule and is the best under it;
a rule that no trial meets registers nothing and still exits 0."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SPECS, run_cli, sqlite_store

pytestmark = pytest.mark.slow

OBJECTIVES = "search.objectives=[{metric: trigger_score, mode: max}, {metric: false_trigger_rate, mode: min}]"
COMMON = [
    "--set", "search.objective=null",
    "--set", "search.mode=null",
    "--set", OBJECTIVES,
    "--set", "search.scheduler=fifo",
    "--set", "train.learning_rate=3.0e-3",
]  # fmt: skip


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """(score to maximise, rate to minimise): a is no worse on both and better on one."""
    return a[0] >= b[0] and a[1] <= b[1] and a != b


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("multi")
    uri = sqlite_store(work)
    result = run_cli(
        "sweep",
        str(SPECS / "trigger_tiny.yaml"),
        *COMMON,
        "--set", "search.num_trials=4",
        "--set", "search.max_concurrent_trials=1",
        "--set", "train.epochs=2",
        "--set", "search.select={metric: trigger_score, mode: max, where: ['false_trigger_rate <= 0.5']}",
        cwd=work,
        env={"MLFLOW_TRACKING_URI": uri},
    )  # fmt: skip
    return {"result": result, "uri": uri, "work": work}


def test_front_is_tagged_plotted_and_shown(sweep: dict) -> None:
    result = sweep["result"]
    assert result.returncode == 0, result.stderr[-4000:]
    client = MlflowClient(sweep["uri"])
    experiment = client.get_experiment_by_name("trigger-tiny")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("ftray.role") == "sweep")
    trials = [r for r in runs if r.data.tags.get("ftray.role") == "trial"]
    assert len(trials) == 4
    points = {
        r.data.tags["ftray.trial_id"]: (
            r.data.metrics["trigger_score"],
            r.data.metrics["false_trigger_rate"],
        )
        for r in trials
        if r.data.tags["ftray.trial_status"] == "completed"
    }
    expected = {t for t, p in points.items() if not any(dominates(q, p) for q in points.values())}
    tagged = {
        r.data.tags["ftray.trial_id"] for r in trials if r.data.tags["ftray.pareto"] == "true"
    }
    assert {r.data.tags["ftray.pareto"] for r in trials} <= {"true", "false"}
    assert tagged == expected and tagged
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/pareto_front.png" in plots
    assert '"false_trigger_rate"' in parent.data.tags["ftray.objectives"]

    lines = result.stdout.splitlines()
    header = lines[next(i for i, line in enumerate(lines) if line.startswith("sweep ")) + 1]
    assert header.split()[:6] == [
        "rank",
        "trial",
        "status",
        "trigger_score",
        "false_trigger_rate",
        "pareto",
    ]
    assert "never on it" in result.stdout


def test_the_registered_version_meets_the_rule_and_is_best_under_it(sweep: dict) -> None:
    assert sweep["result"].returncode == 0
    client = MlflowClient(sweep["uri"])
    champion = client.get_model_version_by_alias("trigger-tiny", "champion")
    experiment = client.get_experiment_by_name("trigger-tiny")
    trials = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`ftray.role` = 'trial'"
    )
    admitted = [
        r
        for r in trials
        if r.data.metrics["false_trigger_rate"] <= 0.5
        and r.data.tags["ftray.trial_status"] == "completed"
    ]
    assert admitted, "the rule admits some trial in this sweep"
    winner = next(r for r in trials if r.info.run_id == champion.run_id)
    assert winner.data.metrics["false_trigger_rate"] <= 0.5
    assert winner.data.metrics["trigger_score"] == max(
        r.data.metrics["trigger_score"] for r in admitted
    )
    assert champion.tags["ftray.objective"] == "trigger_score"


def test_a_rule_no_trial_meets_registers_nothing(tmp_path: Path) -> None:
    uri = sqlite_store(tmp_path)
    result = run_cli(
        "sweep",
        str(SPECS / "trigger_tiny.yaml"),
        *COMMON,
        "--set", "name=nobody-qualifies",
        "--set", "search.num_trials=1",
        "--set", "train.epochs=1",
        "--set", "search.select={metric: trigger_score, where: ['trigger_score > 2']}",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    said = [line for line in result.stdout.splitlines() if "nothing registered" in line]
    assert said == [
        "no finished trial meets search.select (max trigger_score where trigger_score > 2); "
        "nothing registered"
    ]
    client = MlflowClient(uri)
    assert client.search_registered_models() == []
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("nobody-qualifies").experiment_id],
        filter_string="tags.`ftray.role` = 'sweep'",
    )
    assert parent.data.tags["ftray.selection"] == "none"
    assert parent.info.status == "FINISHED"
