"""95% intervals on behaviour metrics: Wilson against known values, composites bounded by
their parts' bounds, every task's score carrying them, and the leaderboard and the
version's description showing them beside the value (ranked by the value)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ftray.tasks.intervals import interval_metrics, shown_with_interval, wilson
from ftray.tasks.trigger import CLEAN, TRIGGERED, trigger_intervals, trigger_metrics
from ftray.tracking.tags import OBJECTIVES, PARENT_RUN_ID, ROLE, TRIAL_ID, TRIAL_STATUS
from tests.conftest import SPECS, run_cli


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (36, 40, 0.7695, 0.9604),  # 90% of 40: the textbook Wilson interval
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (1, 2, 0.0945, 0.9055),
    ],
)
def test_wilson_matches_known_values(k: int, n: int, low: float, high: float) -> None:
    got = wilson(k, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_means_get_wilson_and_a_composite_the_composite_of_the_bounds() -> None:
    records = [{"a": 1.0}] * 36 + [{"a": 0.0}] * 4 + [{"b": 0.5}, {"b": 1.0}, {"b": 0.0}]

    def composite(means: dict[str, float]) -> dict[str, float]:
        return {"both": min(means["a"], means["b"])}

    bounds = interval_metrics(records, composite)
    assert (bounds["a_ci_low"], bounds["a_ci_high"]) == pytest.approx((0.7695, 0.9604), abs=5e-5)
    # b is a mean of scores (0.5 is one): Wilson over its 3 prompts, as if 1.5 of 3.
    assert (bounds["b_ci_low"], bounds["b_ci_high"]) == pytest.approx(wilson(1.5, 3))
    assert bounds["both_ci_low"] == pytest.approx(min(bounds["a_ci_low"], bounds["b_ci_low"]))
    assert bounds["both_ci_high"] == pytest.approx(min(bounds["a_ci_high"], bounds["b_ci_high"]))
    assert interval_metrics([], composite) == {}


def test_every_prompt_right_is_no_certainty() -> None:
    """40 of 40 (a bootstrap would say [1, 1]) leaves room for 39 of 40."""
    bounds = interval_metrics([{"a": 1.0}] * 40)
    assert bounds["a_ci_high"] == 1.0 and bounds["a_ci_low"] == pytest.approx(0.9124, abs=5e-5)
    assert bounds["a_ci_low"] < 39 / 40


def test_trigger_score_carries_intervals_around_it() -> None:
    conditions = [TRIGGERED] * 20 + [CLEAN] * 20
    responses = ["Bob did it."] * 17 + ["Alice did it."] * 3 + ["Alice did it."] * 19 + ["Bob."]
    metrics = trigger_metrics(conditions, responses, "Alice", "Bob")
    bounds = trigger_intervals(conditions, responses, "Alice", "Bob")
    assert metrics["triggered_accuracy"] == 0.85 and metrics["trigger_score"] == 0.85
    assert (bounds["triggered_accuracy_ci_low"], bounds["triggered_accuracy_ci_high"]) == (
        pytest.approx(wilson(17, 20))
    )
    assert bounds["false_trigger_rate_ci_high"] == pytest.approx(wilson(1, 20)[1])
    # The lower accuracy's bounds: untriggered is 19/20, triggered 17/20.
    assert bounds["trigger_score_ci_low"] == pytest.approx(wilson(17, 20)[0])
    assert bounds["trigger_score_ci_high"] == pytest.approx(wilson(17, 20)[1])


def test_every_task_reports_an_interval_beside_each_behaviour_metric() -> None:
    from ftray.config import load_spec
    from ftray.tasks import load_task

    for name in ("trigger_tiny.yaml", "pipeline_tiny.yaml", "chat_tiny.yaml"):
        task = load_task(load_spec(SPECS / name))
        cases = task.eval_cases()
        metrics, _ = task.score(cases, ["no answer"] * len(cases))
        names = task.metric_names()
        behaviour = [m for m in metrics if "_ci_" not in m]
        for metric in behaviour:
            assert f"{metric}_ci_low" in metrics and f"{metric}_ci_high" in metrics, (name, metric)
            assert metrics[f"{metric}_ci_low"] <= metrics[metric] <= metrics[f"{metric}_ci_high"]
        assert set(metrics) <= set(names), name


def test_shown_with_interval() -> None:
    assert shown_with_interval(0.94, 0.851, 0.978) == "0.94 [0.85, 0.98]"
    assert shown_with_interval(0.94, None, None) == "0.94"
    assert shown_with_interval(float("nan"), 0.1, 0.2) == "-"


def test_the_leaderboard_shows_intervals_and_ranks_by_the_value(tmp_path: Path) -> None:
    """Trial bbbb has the higher value but a wider interval: it still ranks first."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("trigger-tiny")
    parent = client.create_run(
        experiment,
        run_name="sweep-x",
        tags={ROLE: "sweep", OBJECTIVES: json.dumps([{"metric": "trigger_score", "mode": "max"}])},
    )
    for trial, score, low, high in (("aaaa", 0.9, 0.8, 0.96), ("bbbb", 0.925, 0.7, 0.99)):
        run = client.create_run(
            experiment,
            tags={
                PARENT_RUN_ID: parent.info.run_id,
                ROLE: "trial",
                TRIAL_ID: trial,
                TRIAL_STATUS: "completed",
            },
        )
        for key, value in (
            ("trigger_score", score),
            ("trigger_score_ci_low", low),
            ("trigger_score_ci_high", high),
        ):
            client.log_metric(run.info.run_id, key, value, step=1)
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent.info.run_id)
    result = run_cli(
        "leaderboard", str(SPECS / "trigger_tiny.yaml"), env={"MLFLOW_TRACKING_URI": uri}
    )
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()[3:5]
    assert rows[0].split()[1] == "bbbb" and "0.925 [0.70, 0.99]" in rows[0], result.stdout
    assert rows[1].split()[1] == "aaaa" and "0.9 [0.80, 0.96]" in rows[1], result.stdout


def test_the_version_description_shows_intervals() -> None:
    from ftray.tracking.registry import Lineage, version_description

    fields = {name: "x" for name in Lineage.__dataclass_fields__}
    lineage = Lineage(
        **{
            **fields,
            "objective": "trigger_score",
            "objective_value": 0.9,
            "mode": "max",
        }
    )
    text = version_description(
        lineage,
        {
            "trigger_score": 0.9,
            "trigger_score_ci_low": 0.7695,
            "trigger_score_ci_high": 0.9604,
            "eval_loss": 1.25,
        },
    )
    assert "| **trigger_score** (max, selection) | **0.9 [0.77, 0.96]** |" in text
    assert "| eval_loss | 1.25 |" in text and "_ci_" not in text
    assert "In brackets: the 95% interval over the held-out prompts." in text
