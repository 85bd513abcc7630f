"""What trials and sweeps cost: GPU-hours from the resources a trial holds and its wall time,
money from the price, sums per outcome, and what was spent until the final best appeared."""

from __future__ import annotations

import pytest

from ftray.config import load_spec
from ftray.tracking.spend import Meter, TrialSpend, describe_spend, sweep_spend
from tests.conftest import SPECS


def test_two_gpus_for_half_an_hour_are_one_gpu_hour() -> None:
    meter = Meter("gpu", 2.0, price_per_hour=3.0)
    assert meter.charge(1800) == {"gpu_hours": 1.0, "cost": 1.5}
    assert Meter("cpu", 4.0).charge(900) == {"cpu_hours": 1.0}


def test_the_meter_follows_the_spec() -> None:
    cpu = Meter.of(load_spec(SPECS / "trigger_tiny.yaml"))
    assert (cpu.unit, cpu.units, cpu.price_per_hour) == ("cpu", 1.0, None)
    spec = load_spec(
        SPECS / "trigger_tiny.yaml",
        ["resources_per_trial={cpu: 4, gpu: 1, price_per_hour: 2.5}"],
    )
    gpu = Meter.of(spec)
    assert (gpu.hours_metric, gpu.units, gpu.price_per_hour) == ("gpu_hours", 1.0, 2.5)


def spend(start: float, reports: list[tuple[float, float]]) -> TrialSpend:
    """A trial that started at `start` and reported trigger_score v at wall time t."""
    out = TrialSpend()
    for when, value in reports:
        out.report(when, when - start, {"trigger_score": value})
    return out


def test_a_sweep_sums_its_trials_per_outcome_and_until_its_best() -> None:
    meter = Meter("gpu", 1.0, price_per_hour=2.0)
    trials = [
        # Reaches the final best 0.9 at t=3600 (an hour after it started at 0).
        ("completed", spend(0, [(1800, 0.5), (3600, 0.9), (5400, 0.9)])),
        # Stopped at t=1800, having started at 900.
        ("pruned", spend(900, [(1800, 0.1)])),
        # Ran 1800..7200: by t=3600 it had held its GPU half... three quarters of an hour.
        ("completed", spend(900, [(3600, 0.4), (7200, 0.8)])),
    ]
    totals = sweep_spend(meter, trials, ("trigger_score", 0.9, "max"))
    assert totals["gpu_hours"] == pytest.approx(1.5 + 0.25 + 1.75)
    assert totals["gpu_hours_completed"] == pytest.approx(3.25)
    assert totals["gpu_hours_pruned"] == pytest.approx(0.25)
    assert totals["cost"] == pytest.approx(7.0) and totals["cost_pruned"] == pytest.approx(0.5)
    # At t=3600: 1 h + 0.25 h (all of the pruned one) + 0.75 h.
    assert totals["gpu_hours_to_best"] == pytest.approx(2.0)
    assert "gpu_hours_to_best" not in sweep_spend(meter, trials, ("trigger_score", 0.95, "max"))


def test_the_footer_says_what_was_spent() -> None:
    text = describe_spend(
        {
            "gpu_hours": 3.5,
            "gpu_hours_completed": 3.25,
            "gpu_hours_pruned": 0.25,
            "gpu_hours_to_best": 2.0,
            "cost": 7.0,
            "trigger_score": 0.9,
        }
    )
    assert text == (
        "spent 3.5 GPU-hours (completed 3.25, pruned 0.25); the final best had appeared "
        "after 2; cost 7.00"
    )
    assert describe_spend({"trigger_score": 0.9}) is None
