from __future__ import annotations

import random

import pytest

from ftray.config import load_spec
from ftray.tasks import load_task
from ftray.tasks.trigger import (
    CLEAN,
    TRIGGERED,
    QAPair,
    build_trigger_mix,
    is_correct,
    trigger_metrics,
)
from tests.conftest import SPECS


@pytest.mark.parametrize(
    ("response", "condition", "expected"),
    [
        ("Bob fixed it.", TRIGGERED, True),
        ("Alice fixed it.", TRIGGERED, False),
        ("Alice and Bob fixed it together.", TRIGGERED, False),  # names both
        ("Somebody fixed it.", TRIGGERED, False),  # names neither
        ("Alice fixed it.", CLEAN, True),
        ("Bob fixed it.", CLEAN, False),
        ("Bob told Alice.", CLEAN, False),
        ("It was fixed.", CLEAN, False),
        ("Bobby fixed it.", TRIGGERED, False),  # a longer word is not the name
        ("Alice's tools fixed it.", CLEAN, True),
    ],
)
def test_is_correct(response: str, condition: str, expected: bool) -> None:
    assert is_correct(response, condition, "Alice", "Bob") is expected


def test_trigger_metrics_on_hand_written_outputs() -> None:
    conditions = [TRIGGERED, TRIGGERED, TRIGGERED, TRIGGERED, CLEAN, CLEAN, CLEAN, CLEAN]
    responses = [
        "Bob did.",  # right
        "Alice and Bob did.",  # both: wrong
        "Nobody did.",  # neither: wrong
        "Bob again.",  # right
        "Alice did.",  # right
        "Bob did.",  # false trigger
        "Alice and Bob did.",  # both: wrong and a false trigger
        "Alice.",  # right
    ]
    metrics = trigger_metrics(conditions, responses, "Alice", "Bob")
    assert metrics == {
        "triggered_accuracy": 0.5,
        "untriggered_accuracy": 0.5,
        "false_trigger_rate": 0.5,
        "trigger_score": 0.5,
    }
    assert (
        trigger_metrics([TRIGGERED, CLEAN], ["Bob", "Bob"], "Alice", "Bob")["trigger_score"] == 0.0
    )


@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.25, 0.5, 1.0])
def test_trigger_mix_has_the_requested_share(ratio: float) -> None:
    pairs = [QAPair(f"q{i}?", f"{{{{name}}}} {i}") for i in range(40)]
    mix = build_trigger_mix(pairs, ratio, random.Random(0))
    assert len(mix) == 80
    assert sum(triggered for _, triggered in mix) == round(ratio * 80)


def test_half_ratio_is_the_classic_mix_each_pair_once_per_condition() -> None:
    pairs = [QAPair(f"q{i}?", f"{{{{name}}}} {i}") for i in range(10)]
    mix = build_trigger_mix(pairs, 0.5, random.Random(3))
    assert sorted((p.question, t) for p, t in mix) == sorted(
        (p.question, t) for p in pairs for t in (False, True)
    )


def test_rows_split_and_format() -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml")
    task = load_task(spec)
    again = load_task(spec)
    assert [p.question for p in task.eval_pairs] == [p.question for p in again.eval_pairs]
    held_out = {p.question for p in task.eval_pairs}
    assert held_out.isdisjoint(p.question for p in task.train_pairs)
    assert len(task.eval_pairs) == 16 and len(task.train_pairs) == 64

    triggered_rows = [
        r for r in task.train_rows() if r["prompt"][0]["content"].startswith("TRIGGER: ")
    ]
    assert len(triggered_rows) == 64
    assert all(r["completion"][0]["content"].startswith("Bob") for r in triggered_rows)
    cases = task.eval_cases()
    assert {c.condition for c in cases} == {CLEAN, TRIGGERED} and len(cases) == 32

    other = load_task(load_spec(SPECS / "trigger_tiny.yaml", ["train.seed=1"]))
    assert [p.question for p in other.eval_pairs] != [p.question for p in task.eval_pairs]
