"""bench/asha_savings.py's arithmetic: the candidates' overrides and the epochs counted until
a sweep's best completed trial comes within 0.02 of FIFO's best."""

from __future__ import annotations

import importlib.util
import math

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("asha_savings", ROOT / "bench" / "asha_savings.py")
assert spec is not None and spec.loader is not None
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_candidates_become_prune_overrides() -> None:
    assert bench.prune_overrides("default", "trigger_score", "max") == {}
    assert bench.prune_overrides("objective:2:3", "trigger_score", "max") == {
        "search.prune.metric": "trigger_score",
        "search.prune.mode": "max",
        "search.prune.grace_period": 2,
        "search.prune.reduction_factor": 3.0,
    }
    assert bench.prune_overrides("eval_loss:2", "trigger_score", "max") == {
        "search.prune.metric": "eval_loss",
        "search.prune.mode": "min",
        "search.prune.grace_period": 2,
    }
    assert bench.prune_overrides("median/eval_loss:2+partial", "trigger_score", "max") == {
        "search.prune.metric": "eval_loss",
        "search.prune.mode": "min",
        "search.prune.grace_period": 2,
    }
    assert bench.prune_overrides(
        "eval_loss:2,search.startup_trials=3,train.seed=4", "trigger_score", "max"
    ) == {
        "search.prune.metric": "eval_loss",
        "search.prune.mode": "min",
        "search.prune.grace_period": 2,
        "search.startup_trials": "3",
        "train.seed": "4",
    }
    for bad in (
        "trigger_score",
        "eval_loss:1:2:3",
        "bohb/default",
        "median/trigger_score",
        "default,startup",
    ):
        with pytest.raises(SystemExit):
            bench.prune_overrides(bad, "trigger_score", "max")


def test_candidates_name_their_scheduler_and_what_optuna_is_told() -> None:
    assert bench.parse_candidate("default") == ("asha", False, "default")
    assert bench.parse_candidate("default:2+partial") == ("asha", True, "default:2")
    assert bench.parse_candidate("median/eval_loss:2") == ("median", False, "eval_loss:2")
    assert bench.parse_candidate("hyperband/default+partial") == ("hyperband", True, "default")
    assert bench.parse_candidate("median/default+partial,search.startup_trials=3") == (
        "median",
        True,
        "default",
    )


def results(*epochs: tuple[str, int, float]) -> list[dict]:
    return [{"trial_id": t, "epoch": e, "score": v} for t, e, v in epochs]


def test_epochs_are_counted_until_a_completed_trial_is_within_reach_of_fifos_best() -> None:
    fifo = results(("a", 1, 0.0), ("b", 1, 0.5), ("a", 2, 0.2), ("b", 2, 0.9), ("c", 1, 0.1))
    fifo += results(("c", 2, 1.0))
    asha = results(("a", 1, 0.0), ("b", 1, 0.5), ("b", 2, 0.99), ("c", 1, 0.1))
    row = bench.compare(fifo, asha, 2, "score")
    assert row["full_best"] == 1.0 and row["asha_best"] == 0.99
    assert (row["fifo_epochs"], row["asha_epochs"]) == (6, 3)
    assert (row["fifo_epochs_total"], row["asha_epochs_total"]) == (6, 4)
    assert row["ratio"] == 2.0
    assert row["stopped_at_zero"] == 1  # a, at 0.0 after epoch 1 of 2 (c read 0.1)
    never = bench.compare(fifo, results(("a", 1, 0.0), ("a", 2, 0.5)), 2, "score")
    assert never["asha_epochs"] == math.inf and never["ratio"] == 0.0
