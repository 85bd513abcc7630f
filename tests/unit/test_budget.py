"""The budget's arithmetic: what is spent (running trials counted up to now), what one more
trial is expected to cost from the sweep's own epochs, and when nothing more may start."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ftray.config.search import BudgetSpec
from ftray.sweep.budget import Budget, BudgetStopper
from ftray.tracking.recorder import TrialRecord
from ftray.tracking.spend import Meter
from ftray.tracking.tags import TrialStatus


def trial(seconds: float, epochs: int, status: TrialStatus, reported_at: float) -> TrialRecord:
    record = TrialRecord("run", 4, status)
    record.last_result = {"epoch": epochs}
    record.spend.seconds = seconds
    record.spend.started_at = reported_at - seconds
    record.spend.reported_at = reported_at
    return record


def budget(kind: str, limit: float, records: list[TrialRecord], started: float = 0.0) -> Budget:
    recorder = SimpleNamespace(
        parent_run_id=f"parent-{kind}-{limit}",
        meter=Meter("gpu", 2.0, price_per_hour=10.0),
        records={str(i): r for i, r in enumerate(records)},
    )
    return Budget(BudgetSpec(**{kind: limit}), recorder, planned_epochs=4, started=started)


def test_gpu_hours_spent_count_running_trials_up_to_now() -> None:
    records = [
        trial(1800, 4, TrialStatus.COMPLETED, reported_at=1800),  # 2 GPUs x 0.5 h = 1.0
        trial(900, 2, TrialStatus.RUNNING, reported_at=2700),  # 900 s + 900 s since = 1.0
    ]
    spent = budget("gpu_hours", 10, records)
    assert spent.spent(now=3600) == pytest.approx(2.0)
    # 2700 s over 6 epochs = 450 s an epoch; a trial plans 4: 1800 s, 1.0 GPU-hour.
    assert spent.trial_seconds() == pytest.approx(1800)
    assert budget("gpu_hours", 3.0, records).affords_another(now=3600)
    assert not budget("gpu_hours", 2.9, records).affords_another(now=3600)
    assert not budget("gpu_hours", 2.0, records).exhausted(now=3599)
    assert budget("gpu_hours", 2.0, records).exhausted(now=3600)


def test_cost_and_wall_hours() -> None:
    records = [trial(1800, 4, TrialStatus.COMPLETED, reported_at=1800)]
    assert budget("cost", 100, records).spent(now=1800) == pytest.approx(5.0)  # 10 an hour
    wall = budget("wall_hours", 1.0, records, started=0.0)
    assert wall.spent(now=1800) == pytest.approx(0.5)
    assert wall.affords_another(now=1800)  # 0.5 h spent + 0.5 h for a trial
    assert not wall.affords_another(now=1801)


def test_before_any_epoch_a_trial_starts_while_anything_is_left() -> None:
    fresh = budget("wall_hours", 1.0, [], started=0.0)
    assert fresh.trial_seconds() is None
    assert fresh.affords_another(now=3599) and not fresh.affords_another(now=3600)


def test_the_stopper_ends_the_running_trials_once_spent() -> None:
    records = [trial(1800, 4, TrialStatus.RUNNING, reported_at=1800)]
    live = budget("wall_hours", 1.0, records, started=0.0)
    stopper = BudgetStopper(live.recorder.parent_run_id)
    import time

    live.started = time.time() - 1800
    assert not stopper.stop_all() and not live.spent_out
    live.started = time.time() - 3601
    assert stopper.stop_all() and live.spent_out
    live.release()
    assert not stopper.stop_all()


def test_one_budget_at_a_time() -> None:
    with pytest.raises(ValueError, match="takes one of gpu_hours, cpu_hours, cost or wall_hours"):
        BudgetSpec(cost=1, wall_hours=1)
    with pytest.raises(ValueError, match="takes one of"):
        BudgetSpec()
    assert str(BudgetSpec(wall_hours=0.5)) == "0.5 wall-hours"
