"""Several objectives, the Pareto front and the select rule: spec validation (exit 2 at the
line), and the front and winner computed from hand-made trial outcomes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ftray.config import Condition, Objective, SelectRule, load_spec
from ftray.errors import InputError
from ftray.sweep.objectives import TrialOutcome, choose_winner, pareto_front
from ftray.tracking.tags import TrialStatus
from tests.conftest import SPECS
from tests.unit.test_bad_input import assert_input_error

MULTI = """\
search:
  objectives:
    - {metric: trigger_score, mode: max}
    - {metric: false_trigger_rate, mode: min}
  select:
    metric: trigger_score
    mode: max
    where: ["false_trigger_rate <= 0.05"]
  num_trials: 4
  space:
    lora.r: {choice: [4, 8]}
"""


def spec_text(search: str) -> str:
    text = (
        (SPECS / "trigger_tiny.yaml")
        .read_text()
        .replace("../datasets", str(SPECS.parent / "datasets"))
    )
    return text[: text.index("search:")] + search + text[text.index("resources_per_trial:") :]


def write(tmp_path: Path, search: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text(search))
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_objectives_and_select_are_read(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, MULTI))
    assert spec.search.goals == (
        Objective(metric="trigger_score", mode="max"),
        Objective(metric="false_trigger_rate", mode="min"),
    )
    assert spec.search.primary.metric == "trigger_score"
    rule = spec.search.selection
    assert rule.where == (Condition(metric="false_trigger_rate", op="<=", value=0.05),)
    assert rule.admits({"false_trigger_rate": 0.05}) and not rule.admits(
        {"false_trigger_rate": 0.1}
    )
    assert not rule.admits({}), "a missing metric does not meet a bound"


def test_the_one_objective_shorthand_is_one_goal() -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml")
    assert spec.search.goals == (Objective(metric="trigger_score", mode="max"),)
    assert spec.search.selection == SelectRule(metric="trigger_score", mode="max")


def test_select_with_one_objective(tmp_path: Path) -> None:
    search = MULTI.replace(
        "  objectives:\n    - {metric: trigger_score, mode: max}\n"
        "    - {metric: false_trigger_rate, mode: min}\n",
        "  objective: trigger_score\n  mode: max\n",
    )
    spec = load_spec(write(tmp_path, search))
    assert len(spec.search.goals) == 1 and spec.search.selection.where


@pytest.mark.parametrize(
    ("replace", "with_", "needle", "line_needle"),
    [
        (
            "false_trigger_rate <= 0.05",
            "false_trigger_rate <> 0.05",
            "op one of <= < >= > ==",
            "where:",
        ),
        ("false_trigger_rate <= 0.05", "false_trigger_rate <= lots", "not a comparison", "where:"),
        (
            "metric: trigger_score\n    mode",
            "metric: accuracy\n    mode",
            "select.metric 'accuracy' is not a metric",
            "metric: accuracy",
        ),
        (
            "false_trigger_rate <= 0.05",
            "recall <= 0.05",
            "select.where[0] 'recall' is not a metric",
            "where:",
        ),
        (
            "{metric: false_trigger_rate, mode: min}",
            "{metric: precision, mode: min}",
            "objectives[1].metric 'precision' is not a metric",
            "precision",
        ),
        (
            "{metric: false_trigger_rate, mode: min}",
            "{metric: false_trigger_rate, mode: down}",
            "mode",
            "mode: down",
        ),
        (
            "  objectives:",
            "  objective: trigger_score\n  objectives:",
            "both objective: and objectives:",
            "search:",
        ),
    ],
)
def test_bad_rules_exit_2_at_their_line(
    tmp_path: Path, replace: str, with_: str, needle: str, line_needle: str
) -> None:
    assert replace in MULTI
    spec = write(tmp_path, MULTI.replace(replace, with_))
    assert_input_error(spec, "spec.yaml", line_of(spec, line_needle), needle)


def test_no_objective_at_all_is_bad_input(tmp_path: Path) -> None:
    search = MULTI[: MULTI.index("  objectives:")] + MULTI[MULTI.index("  select:") :]
    with pytest.raises(InputError, match="search needs objective"):
        load_spec(write(tmp_path, search))


def outcome(trial: str, status: TrialStatus, score: float, rate: float) -> TrialOutcome:
    return TrialOutcome(
        trial_id=trial,
        run_id=f"run-{trial}",
        status=status,
        metrics={"trigger_score": score, "false_trigger_rate": rate},
        epochs=2,
        config={},
        checkpoint=object(),
    )


GOALS = (
    Objective(metric="trigger_score", mode="max"),
    Objective(metric="false_trigger_rate", mode="min"),
)
COMPLETED = TrialStatus.COMPLETED


def test_pareto_front_of_completed_trials_only() -> None:
    outcomes = [
        outcome("a", COMPLETED, 0.9, 0.2),  # best score
        outcome("b", COMPLETED, 0.5, 0.0),  # best rate
        outcome("c", COMPLETED, 0.5, 0.3),  # dominated by a and b
        outcome("d", COMPLETED, 0.7, 0.1),  # trade-off: on the front
        outcome("e", TrialStatus.PRUNED, 1.0, 0.0),  # would dominate all, but stopped early
        outcome("f", TrialStatus.FAILED, 1.0, 0.0),
        outcome("g", COMPLETED, math.nan, 0.0),
    ]
    assert pareto_front(outcomes, GOALS) == {"a", "b", "d"}
    assert pareto_front([], GOALS) == set()


def test_winner_meets_the_rule_and_is_best_under_it() -> None:
    rule = SelectRule(
        metric="trigger_score",
        mode="max",
        where=(Condition(metric="false_trigger_rate", op="<=", value=0.15),),
    )
    outcomes = [
        outcome("a", COMPLETED, 0.9, 0.2),
        outcome("b", COMPLETED, 0.5, 0.0),
        outcome("d", COMPLETED, 0.7, 0.1),
        outcome("e", TrialStatus.PRUNED, 1.0, 0.0),
    ]
    assert choose_winner(outcomes, GOALS, rule).trial_id == "d", "completed before pruned"
    assert choose_winner(outcomes[:1], GOALS, rule) is None
    strict = rule.model_copy(
        update={"where": (Condition(metric="trigger_score", op=">", value=2),)}
    )
    assert choose_winner(outcomes, GOALS, strict) is None
    minimise = SelectRule(metric="false_trigger_rate", mode="min")
    assert choose_winner(outcomes[:3], GOALS, minimise).trial_id == "b"
