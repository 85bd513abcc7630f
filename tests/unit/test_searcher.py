"""Search space → Optuna distributions, seeded proposals, ASHA/FIFO."""

from __future__ import annotations

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from ftray.config import load_spec
from ftray.sweep.searcher import build_scheduler, build_searcher
from ftray.sweep.space import max_epochs, optuna_distribution
from tests.conftest import SPECS


def first_proposals(*overrides: str, n: int = 4) -> list[dict]:
    searcher = build_searcher(load_spec(SPECS / "trigger_tiny.yaml", list(overrides)))
    return [searcher.suggest(f"trial-{i}") for i in range(n)]


def test_same_spec_and_seed_give_the_same_first_proposals() -> None:
    first, again = first_proposals(), first_proposals()
    assert first == again
    assert len({repr(p) for p in first}) == len(first), "proposals should differ from each other"
    assert first_proposals("train.seed=7") != first


def test_proposals_stay_inside_the_space() -> None:
    for proposal in first_proposals(n=8):
        assert proposal["lora.r"] in (4, 8, 16, 32)
        assert 1.0e-3 <= proposal["train.learning_rate"] <= 1.0e-2
        assert 0.25 <= proposal["task.trigger_ratio"] <= 0.5


def test_distribution_mapping() -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml")
    space = spec.search.space
    assert isinstance(
        optuna_distribution(space["lora.r"]), optuna.distributions.CategoricalDistribution
    )
    lr = optuna_distribution(space["train.learning_rate"])
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log
    ratio = optuna_distribution(space["task.trigger_ratio"])
    assert not ratio.log and (ratio.low, ratio.high) == (0.25, 0.5)
    spec = spec.with_values({"search.space": {"train.epochs": {"int": [2, 5]}}})
    epochs = optuna_distribution(spec.search.space["train.epochs"])
    assert isinstance(epochs, optuna.distributions.IntDistribution) and (
        epochs.low,
        epochs.high,
    ) == (2, 5)
    assert max_epochs(spec) == 5


def test_scheduler_choice() -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml")
    asha = build_scheduler(spec)
    assert (
        isinstance(asha, ASHAScheduler)
        and asha._time_attr == "epoch"
        and asha._max_t == spec.train.epochs
    )
    assert isinstance(
        build_scheduler(spec.with_values({"search.scheduler": "fifo"})), FIFOScheduler
    )


def proposals_after_two_results(*overrides: str) -> dict:
    """The third proposal, once the first two trials completed (the second scoring best)."""
    searcher = build_searcher(load_spec(SPECS / "trigger_tiny.yaml", list(overrides)))
    for i, score in enumerate((0.1, 0.9)):
        searcher.suggest(f"trial-{i}")
        searcher.on_trial_complete(f"trial-{i}", {"trigger_score": score})
    return searcher.suggest("trial-2")


def test_startup_trials_sets_how_many_trials_are_random_before_tpe() -> None:
    default = build_searcher(load_spec(SPECS / "trigger_tiny.yaml"))
    assert default._sampler._n_startup_trials == 10  # Optuna's own default, unset
    two = build_searcher(load_spec(SPECS / "trigger_tiny.yaml", ["search.startup_trials=2"]))
    assert two._sampler._n_startup_trials == 2
    # After two results TPE proposes the third from them; by default it is still random.
    assert proposals_after_two_results("search.startup_trials=2") != proposals_after_two_results()
    assert proposals_after_two_results("search.startup_trials=3") == proposals_after_two_results()


def test_startup_trials_must_leave_trials_to_tpe_or_warn() -> None:
    import pytest

    from ftray.errors import InputError
    from ftray.sweep.space import search_warnings

    with pytest.raises(InputError, match="startup_trials"):
        load_spec(SPECS / "trigger_tiny.yaml", ["search.startup_trials=0"])
    spec = load_spec(SPECS / "trigger_tiny.yaml", ["search.startup_trials=8"])
    (warning,) = search_warnings(spec)
    assert "every trial is sampled at random" in str(warning)
    assert (
        search_warnings(load_spec(SPECS / "trigger_tiny.yaml", ["search.startup_trials=7"])) == []
    )
