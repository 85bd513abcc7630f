"""One order for a sweep's trials: the winner, the leaderboard and the registered trial agree,
ties included (the select rule's metric, the other objectives, its tie-break, eval_loss, the
trial id), and missing or NaN values come last."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ftray.config import Condition, Objective, SelectRule, load_spec
from ftray.sweep.objectives import TrialOutcome, choose_winner, pareto_front, ranked
from ftray.tracking.leaderboard import render_sweep
from ftray.tracking.ranking import rank_key
from ftray.tracking.tags import (
    OBJECTIVES,
    PARENT_RUN_ID,
    ROLE,
    SELECT,
    TRIAL_ID,
    TRIAL_STATUS,
    TrialStatus,
)
from tests.conftest import SPECS
from tests.unit.test_bad_input import assert_input_error
from tests.unit.test_objectives import line_of, write

COMPLETED, PRUNED, FAILED = TrialStatus.COMPLETED, TrialStatus.PRUNED, TrialStatus.FAILED
SCORE = (Objective(metric="trigger_score", mode="max"),)
BY_SCORE = SelectRule(metric="trigger_score", mode="max")


def trial(
    trial_id: str, status: TrialStatus = COMPLETED, checkpoint: bool = True, **metrics: float
) -> TrialOutcome:
    return TrialOutcome(
        trial_id=trial_id,
        run_id="",
        status=status,
        metrics=metrics,
        epochs=2,
        config={},
        checkpoint=object() if checkpoint else None,
    )


def order(
    outcomes: list[TrialOutcome],
    goals: tuple[Objective, ...] = SCORE,
    rule: SelectRule = BY_SCORE,
) -> list[str]:
    """The trial ids best first, whatever order the trials came in."""
    shuffled = outcomes[:]
    random.Random(len(outcomes)).shuffle(shuffled)
    first = [o.trial_id for o in ranked(outcomes, goals, rule)]
    assert first == [o.trial_id for o in ranked(shuffled, goals, rule)], "not a total order"
    return first


def test_a_tie_on_the_objective_is_broken_by_eval_loss_then_by_trial_id() -> None:
    outcomes = [
        trial("t4", trigger_score=0.9, eval_loss=1.5),
        trial("t3", trigger_score=0.9, eval_loss=1.2),
        trial("t2", trigger_score=0.9, eval_loss=1.2),
        trial("t1", trigger_score=0.8, eval_loss=0.1),
    ]
    assert order(outcomes) == ["t2", "t3", "t4", "t1"]
    assert choose_winner(outcomes, SCORE, BY_SCORE).trial_id == "t2"


def test_the_select_rules_tie_break_comes_before_eval_loss() -> None:
    rule = SelectRule(
        metric="trigger_score",
        mode="max",
        tie_break=(Objective(metric="false_trigger_rate", mode="min"),),
    )
    outcomes = [
        trial("a", trigger_score=0.9, false_trigger_rate=0.2, eval_loss=0.5),
        trial("b", trigger_score=0.9, false_trigger_rate=0.1, eval_loss=1.5),
        trial("c", trigger_score=0.9, false_trigger_rate=0.1, eval_loss=1.0),
        trial("d", trigger_score=0.9, eval_loss=0.1),  # no tie-break value: after those with one
    ]
    assert order(outcomes, rule=rule) == ["c", "b", "a", "d"]
    assert order(outcomes) == ["d", "a", "c", "b"], "without a tie-break: eval_loss"


def test_among_trials_tied_on_the_first_objective_the_dominating_one_ranks_first() -> None:
    goals = (*SCORE, Objective(metric="false_trigger_rate", mode="min"))
    outcomes = [
        trial("a", trigger_score=0.9, false_trigger_rate=0.3, eval_loss=0.1),
        trial("b", trigger_score=0.9, false_trigger_rate=0.1, eval_loss=2.0),
    ]
    assert order(outcomes, goals) == ["b", "a"]
    winner = choose_winner(outcomes, goals, BY_SCORE)
    assert winner is not None and winner.trial_id in pareto_front(outcomes, goals) == {"b"}


def test_missing_and_nan_values_come_last() -> None:
    outcomes = [
        trial("nan-loss", trigger_score=0.9, eval_loss=math.nan),
        trial("no-loss", trigger_score=0.9),
        trial("loss", trigger_score=0.9, eval_loss=3.0),
        trial("nan-score", trigger_score=math.nan, eval_loss=0.1),
        trial("no-score", eval_loss=0.1),
        trial("lower", trigger_score=0.5, eval_loss=0.1),
    ]
    ranked_ids = order(outcomes)
    assert ranked_ids[:4] == ["loss", "nan-loss", "no-loss", "lower"]
    assert set(ranked_ids[4:]) == {"nan-score", "no-score"}, "no objective: never the winner"
    assert choose_winner(outcomes, SCORE, BY_SCORE).trial_id == "loss"
    assert choose_winner(outcomes[3:5], SCORE, BY_SCORE) is None


def test_what_the_rule_may_register_comes_first() -> None:
    rule = SelectRule(
        metric="trigger_score",
        mode="max",
        where=(Condition(metric="false_trigger_rate", op="<=", value=0.1),),
    )
    outcomes = [
        trial("failed", FAILED, trigger_score=1.0, false_trigger_rate=0.0),
        trial("pruned-meets", PRUNED, trigger_score=0.6, false_trigger_rate=0.0),
        trial("completed-misses", trigger_score=0.95, false_trigger_rate=0.5),
        trial("completed-meets", trigger_score=0.7, false_trigger_rate=0.05),
        trial("pruned-misses", PRUNED, trigger_score=0.99, false_trigger_rate=0.5),
    ]
    assert order(outcomes, rule=rule) == [
        "completed-meets",
        "pruned-meets",
        "completed-misses",
        "pruned-misses",
        "failed",
    ]
    # With no completed trial meeting the rule, a pruned one is registered, and is row 1.
    rest = [o for o in outcomes if o.trial_id != "completed-meets"]
    assert order(rest, rule=rule)[0] == choose_winner(rest, SCORE, rule).trial_id == "pruned-meets"


def test_the_key_reads_statuses_and_metrics_as_mlflow_returns_them() -> None:
    ahead = rank_key("completed", {"trigger_score": 0.9, "eval_loss": 1.0}, "b", SCORE, BY_SCORE)
    behind = rank_key("completed", {"trigger_score": 0.9, "eval_loss": 1.0}, "c", SCORE, BY_SCORE)
    pruned = rank_key("pruned", {"trigger_score": 0.9, "eval_loss": 0.5}, "a", SCORE, BY_SCORE)
    running = rank_key("running", {"trigger_score": 1.0}, "0", SCORE, BY_SCORE)
    assert ahead < behind < pruned < running


# --- the leaderboard's row 1 is the registered trial ---------------------------------------


def record_sweep(
    uri: str, outcomes: list[TrialOutcome], goals: tuple[Objective, ...], rule: SelectRule
) -> None:
    """A finished sweep as the driver records it in MLflow: the parent run with its objectives
    and rule, one child run per trial with its status, id and last metrics."""
    client = MlflowClient(uri)
    experiment = client.create_experiment("trigger-tiny")
    tags = {ROLE: "sweep", OBJECTIVES: json.dumps([g.model_dump() for g in goals])}
    parent = client.create_run(
        experiment, run_name="sweep-tied", tags={**tags, SELECT: json.dumps(rule.model_dump())}
    )
    for outcome in outcomes:
        run = client.create_run(
            experiment,
            tags={
                PARENT_RUN_ID: parent.info.run_id,
                ROLE: "trial",
                TRIAL_ID: outcome.trial_id,
                TRIAL_STATUS: outcome.status.value,
            },
        )
        for metric, value in outcome.metrics.items():
            client.log_metric(run.info.run_id, metric, value, step=2)
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent.info.run_id)


def board_rows(uri: str) -> list[list[str]]:
    """The leaderboard's header and rows, as `ftray leaderboard` prints them."""
    client = MlflowClient(uri)
    spec = load_spec(SPECS / "trigger_tiny.yaml")
    [parent] = client.search_runs(
        [client.get_experiment_by_name("trigger-tiny").experiment_id],
        filter_string=f"tags.`{ROLE}` = 'sweep'",
    )
    lines = render_sweep(client, spec, parent).splitlines()[1:]
    table = [line for line in lines if not line.startswith(("failed:", "----"))]
    return [line.split() for line in table]


@pytest.mark.parametrize(
    ("tie_break", "columns", "expected"),
    [
        ((), ["trigger_score", "eval_loss"], ["t1", "t2", "t3", "t5"]),
        (
            (Objective(metric="triggered_accuracy", mode="max"),),
            ["trigger_score", "triggered_accuracy", "eval_loss"],
            ["t2", "t3", "t5", "t1"],
        ),
    ],
    ids=["eval-loss-then-id", "tie-break-first"],
)
def test_in_a_tied_sweep_leaderboard_row_1_is_the_registered_trial(
    tmp_path: Path, tie_break: tuple[Objective, ...], columns: list[str], expected: list[str]
) -> None:
    rule = BY_SCORE.model_copy(update={"tie_break": tie_break})
    # Listed in neither the order of their ids nor of their eval_loss, as Ray and MLflow may
    # list trials; four share the best trigger_score.
    outcomes = [
        trial("t5", trigger_score=1.0, triggered_accuracy=1.0, eval_loss=0.9),
        trial("t3", trigger_score=1.0, triggered_accuracy=1.0, eval_loss=0.4),
        trial("t4", trigger_score=0.5, triggered_accuracy=1.0, eval_loss=0.1),
        trial("t2", trigger_score=1.0, triggered_accuracy=1.0, eval_loss=0.4),
        trial("t1", trigger_score=1.0, triggered_accuracy=0.5, eval_loss=0.2),
        trial("t0", FAILED),
    ]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    record_sweep(uri, outcomes, SCORE, rule)
    header, *rows = board_rows(uri)
    assert header[3 : 3 + len(columns)] == columns
    trials = [row[header.index("trial")] for row in rows]
    winner = choose_winner(outcomes, SCORE, rule)
    assert winner is not None and trials[0] == winner.trial_id == expected[0]
    assert trials == [*expected, "t4", "t0"]
    assert [o.trial_id for o in ranked(outcomes, SCORE, rule)] == trials


# --- the tie-break in the spec ---------------------------------------------------------------

TIE_BREAK = """\
search:
  objective: trigger_score
  mode: max
  select:
    metric: trigger_score
    tie_break: {metric: false_trigger_rate, mode: min}
  num_trials: 4
  space:
    lora.r: {choice: [4, 8]}
"""


def test_a_tie_break_is_one_metric_or_a_list(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, TIE_BREAK))
    assert spec.search.selection.tie_break == (Objective(metric="false_trigger_rate", mode="min"),)
    listed = TIE_BREAK.replace(
        "tie_break: {metric: false_trigger_rate, mode: min}",
        "tie_break: [{metric: false_trigger_rate, mode: min}, {metric: eval_loss, mode: min}]",
    )
    spec = load_spec(write(tmp_path, listed))
    assert [g.metric for g in spec.search.selection.tie_break] == [
        "false_trigger_rate",
        "eval_loss",
    ]
    assert str(spec.search.selection) == (
        "max trigger_score, ties by min false_trigger_rate, min eval_loss"
    )


def test_a_tie_break_on_a_metric_the_task_does_not_report_exits_2(tmp_path: Path) -> None:
    spec = write(tmp_path, TIE_BREAK.replace("metric: false_trigger_rate", "metric: precision"))
    assert_input_error(
        spec,
        "spec.yaml",
        line_of(spec, "tie_break:"),
        "select.tie_break[0].metric 'precision' is not a metric",
    )
