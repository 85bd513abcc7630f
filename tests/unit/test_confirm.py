"""search.confirm's choice: the best distinct configurations, their new seeds, and a winner by
the mean over seeds (a lucky single seed does not win)."""

from __future__ import annotations

from ftray.config import load_spec
from ftray.sweep.confirm import (
    candidates,
    config_key,
    confirmation_configs,
    confirmed_winner,
    groups_of,
)
from ftray.sweep.objectives import TrialOutcome
from ftray.tracking.tags import TrialStatus
from tests.conftest import SPECS

SPEC = load_spec(
    SPECS / "trigger_tiny.yaml", ["search.confirm={top_k: 2, seeds: 2}", "train.seed=7"]
)


def trial(tid: str, r: int, score: float, seed: int | None = None) -> TrialOutcome:
    config = {"lora.r": r} | ({"train.run_seed": seed} if seed is not None else {})
    return TrialOutcome(
        tid, f"run-{tid}", TrialStatus.COMPLETED, {"trigger_score": score}, 4, config, object()
    )


def test_the_best_distinct_configurations_get_new_seeds() -> None:
    search = [trial("a", 8, 0.9), trial("b", 8, 0.8), trial("c", 16, 0.85), trial("d", 4, 0.1)]
    chosen = candidates(SPEC, search)
    assert [o.trial_id for o in chosen] == ["a", "c"]  # b is a's configuration again
    configs = confirmation_configs(SPEC, chosen)
    assert configs == [
        {"lora.r": 8, "train.run_seed": 8},
        {"lora.r": 8, "train.run_seed": 9},
        {"lora.r": 16, "train.run_seed": 8},
        {"lora.r": 16, "train.run_seed": 9},
    ]
    assert config_key(configs[0]) == config_key(search[0].config)


def test_a_lucky_seed_loses_to_the_better_mean() -> None:
    lucky, steady = trial("a", 8, 0.95), trial("c", 16, 0.85)
    confirmations = [
        trial("a1", 8, 0.55, 8),
        trial("a2", 8, 0.60, 9),
        trial("c1", 16, 0.80, 8),
        trial("c2", 16, 0.90, 9),
    ]
    winner = confirmed_winner(SPEC, groups_of([lucky, steady], confirmations))
    assert winner is not None and config_key(winner.config) == config_key({"lora.r": 16})
    assert winner.trial_id == "c2"  # the configuration's best trial: its adapter is registered
    assert winner.metrics["trigger_score"] == 0.85
    assert round(winner.metrics["trigger_score_sd"], 4) == 0.05
    assert winner.metrics["trigger_score_seeds"] == 3
