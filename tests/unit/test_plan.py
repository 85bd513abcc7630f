"""`ftray plan`'s arithmetic: a plan from a recorded sweep's seconds per epoch, ASHA's share
of epochs, its spread and fixed phases; fewer trials at once on fewer GPUs; and how far off
the estimate was on earlier sweeps."""

from __future__ import annotations

import pytest

from ftray.config import load_spec
from ftray.sweep.plan import Plan, basis_of, concurrency, past_errors, render_plan
from ftray.tracking.spend import Meter
from tests.conftest import SPECS

RECORD = {
    "trials": 10.0,
    "epochs": 30.0,  # of 40 planned: ASHA stopped a quarter of the epochs
    "planned": 4.0,
    "trial_seconds": 600.0,  # 20 s an epoch
    "concurrent": 2.0,
    "trials_phase": 330.0,  # 300 s if both slots were always busy
    "wall": 360.0,
}


def test_a_plan_from_a_recorded_sweep() -> None:
    basis = basis_of(RECORD, "sweep-1")
    assert basis.seconds_per_epoch == 20 and basis.epoch_share == 0.75
    # 30 s beyond 600 s / 2, a trial taking 60 s on average: half a trial's time.
    assert basis.tail == pytest.approx(0.5) and basis.fixed_seconds == 30
    plan = Plan(trials=20, concurrent=4, epochs=4, meter=Meter("gpu", 1.0, 2.0), basis=basis)
    assert plan.trial_seconds == 20 * 4 * 0.75 * 20  # 1200 s
    assert plan.trial_wall == 4 * 0.75 * 20  # 60 s
    assert plan.wall_seconds == pytest.approx(1200 / 4 + 0.5 * 60 + 30)
    assert plan.spend() == {"gpu_hours": pytest.approx(1200 / 3600), "cost": pytest.approx(2 / 3)}
    spec = load_spec(SPECS / "trigger_tiny.yaml")
    text = render_plan(spec, plan, "checked nothing")
    assert (
        "expected: 0.333 GPU-hours, cost 0.67, wall time 6 min 0 s (5 min 30 s of trials)" in text
    )
    assert "from: sweep sweep-1: 10 trials, 30 epochs run of 40 planned, 20 s per epoch" in text


def test_fewer_gpus_run_fewer_trials_at_once() -> None:
    spec = load_spec(
        SPECS / "trigger_tiny.yaml",
        ["resources_per_trial={cpu: 4, gpu: 2}", "search.max_concurrent_trials=8"],
    )
    assert concurrency(spec, None) == 8 and concurrency(spec, 16) == 8
    assert concurrency(spec, 6) == 3 and concurrency(spec, 1) == 1


def test_past_errors_predict_each_sweep_from_the_one_before() -> None:
    twice = {**RECORD, "trials": 20.0, "epochs": 60.0, "trial_seconds": 1200.0}
    twice |= {"trials_phase": 630.0, "wall": 660.0}  # 1200 / 2 + half of a 60 s trial
    assert past_errors([("a", RECORD), ("b", twice)]) == [pytest.approx(0.0)]
    slower = {**twice, "wall": 600.0}
    assert past_errors([("a", RECORD), ("b", slower)]) == [pytest.approx(0.1)]


@pytest.mark.slow
def test_without_a_sweep_the_plan_probes_one_epoch(tmp_path) -> None:
    from tests.conftest import run_cli

    store = f"sqlite:///{tmp_path / 'none-yet.db'}"
    result = run_cli(
        "plan",
        str(SPECS / "trigger_tiny.yaml"),
        "--tracking-uri",
        store,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "plan: trigger-tiny: 8 trials of 8 epochs, 2 at a time, 1 CPU each"
    assert lines[1].startswith("expected: ") and " CPU-hours, wall time " in lines[1]
    assert lines[2].startswith("from: a probe trial of 1 epoch here (")
    assert lines[3] == (
        "checked: no two finished sweeps of this spec in the store to check such estimates on"
    )
    assert not (tmp_path / "none-yet.db").exists(), "a plan creates no store"
