"""bench/search_efficiency.py's simulation of Tune's trial loop: FIFO runs every trial to its
last epoch, ASHA stops some and spends less, a paused trial resumes where it stopped, and a
sweep that never reaches the target costs infinitely much."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest

from tests.conftest import ROOT

SPEC = "search_spaces/trigger_tiny.yaml"


@pytest.fixture(scope="module")
def bench():
    path = ROOT / "bench" / "search_efficiency.py"
    loaded = importlib.util.spec_from_file_location("search_efficiency", path)
    module = importlib.util.module_from_spec(loaded)
    sys.modules["search_efficiency"] = module
    loaded.loader.exec_module(module)
    yield module
    sys.modules.pop("search_efficiency", None)


def test_fifo_runs_every_trial_to_its_last_epoch(bench) -> None:
    spec = bench.sweep_spec(SPEC, [], 0, 12, "random+fifo")
    outcome = bench.simulate(spec, "random+fifo", 4)
    epochs = spec.train.epochs
    assert outcome.trials == 12
    assert outcome.epochs == 12 * epochs
    assert len(outcome.completions) == 12
    spent = [s for s, _ in outcome.completions]
    assert spent == sorted(spent) and spent[-1] == 12 * epochs
    # Four at a time: the first trials complete before the last ones have started.
    assert spent[0] < 12 * epochs / 2


def test_asha_stops_trials_and_spends_less(bench) -> None:
    spec = bench.sweep_spec(SPEC, [], 0, 24, "default")
    outcome = bench.simulate(spec, "default", 4)
    assert outcome.trials == 24
    assert outcome.epochs < 24 * spec.train.epochs
    assert 0 < len(outcome.completions) < 24


def test_seeds_change_the_sweep_and_repeat_it(bench) -> None:
    def run(seed: int):
        spec = bench.sweep_spec(SPEC, [], seed, 12, "tpe+fifo")
        return bench.simulate(spec, "tpe+fifo", 4).completions

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.skipif(not importlib.util.find_spec("hpbandster"), reason="needs hpbandster")
def test_bohb_pauses_and_resumes_trials(bench) -> None:
    spec = bench.sweep_spec(SPEC, [], 0, 27, "bohb")
    outcome = bench.simulate(spec, "bohb", 4)
    assert outcome.trials == 27
    assert outcome.epochs < 27 * spec.train.epochs
    assert outcome.completions
    # hpbandster draws from numpy's global generator: seeded per sweep, the sweep repeats.
    assert bench.simulate(spec, "bohb", 4).completions == outcome.completions


def test_cost_is_infinite_when_the_target_is_never_reached(bench) -> None:
    outcome = bench.SweepOutcome([(8, 0.5), (16, 0.97), (24, 0.99)], 24, 3)
    assert bench.cost_to(outcome, 1.0, 0.02, "max") == 24
    assert bench.cost_to(outcome, 0.98, 0.02, "max") == 16
    assert math.isinf(bench.cost_to(outcome, 1.2, 0.02, "max"))
    assert bench.cost_to(bench.SweepOutcome([(4, 0.3)], 4, 1), 0.29, 0.02, "min") == 4
    q1, median, q3 = bench.quartiles([1.0, 2.0, 3.0, math.inf, math.inf])
    assert (q1, median) == (2.0, 3.0) and math.isinf(q3)
