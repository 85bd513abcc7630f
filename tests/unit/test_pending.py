"""Trials waiting for resources: what is missing, and the watch that stops a stuck sweep."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from ftray.config import load_spec
from ftray.errors import InputError
from ftray.log import get_logger
from ftray.sweep import pending
from ftray.sweep.pending import PendingWatch, missing_resources, trial_resources
from tests.conftest import SPECS


@dataclass
class FakeTrial:
    status: str


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pending_timeout_defaults_to_thirty_minutes_and_must_be_positive() -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml")
    assert spec.search is not None and spec.search.pending_timeout == 1800
    assert load_spec(SPECS / "trigger_tiny.yaml", ["search.pending_timeout=30"]).search
    with pytest.raises(InputError, match="pending_timeout"):
        load_spec(SPECS / "trigger_tiny.yaml", ["search.pending_timeout=0"])


def test_trial_resources_in_ray_names() -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml", ["resources_per_trial.gpu=1"])
    assert trial_resources(spec) == {"CPU": 1, "GPU": 1}
    assert trial_resources(load_spec(SPECS / "trigger_tiny.yaml")) == {"CPU": 1}


def test_missing_resources_names_what_no_node_has() -> None:
    nodes = [{"CPU": 8.0}, {"CPU": 2.0, "GPU": 1.0}]
    assert missing_resources({"CPU": 1, "GPU": 1}, nodes) is None
    assert missing_resources({"CPU": 1, "GPU": 2}, nodes) == "GPU 2 (the largest node has 1)"
    assert missing_resources({"GPU": 1}, [{"CPU": 4.0}]) == "GPU 1 (the largest node has 0)"
    assert missing_resources({"CPU": 1}, []) == "CPU 1 (the largest node has 0)"
    both = missing_resources({"CPU": 4, "GPU": 1}, nodes)
    assert both is not None and "no node has all of them at once" in both


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_watch_warns_then_stops_the_sweep_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pending, "shortfall_message", lambda asked: "no node has GPU 1")
    clock = FakeClock()
    watch = PendingWatch("exp-a", 120, {"GPU": 1}, clock=clock)
    waiting = [FakeTrial("PENDING"), FakeTrial("PENDING")]
    logger, collect = get_logger(), Collect()
    logger.addHandler(collect)
    try:
        watch.on_step_end(0, waiting)
        clock.now += 59
        watch.on_step_end(1, waiting)
        assert not collect.messages and not watch.stop_all()
        clock.now += 2
        watch.on_step_end(2, waiting)
        (warning,) = collect.messages
        assert "2 trial(s) have waited 61 s" in warning and "no node has GPU 1" in warning
        clock.now += 60
        watch.on_step_end(3, waiting)
        assert len(collect.messages) == 1, "the watch warns once"
        assert watch.stop_all() and not watch(trial_id="t", result={})
    finally:
        logger.removeHandler(collect)
    finding = PendingWatch.finding_for("exp-a")
    assert finding is not None and "search.pending_timeout = 120 s (2 min)" in finding
    assert "no node has GPU 1" in finding
    PendingWatch.findings.pop("exp-a")


def test_a_running_trial_resets_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pending, "shortfall_message", lambda asked: "busy")
    clock = FakeClock()
    watch = PendingWatch("exp-b", 100, {"CPU": 1}, warned=True, clock=clock)
    watch.on_step_end(0, [FakeTrial("PENDING")])
    clock.now += 90
    # One trial runs while another waits: the cluster is busy, not stuck.
    watch.on_step_end(1, [FakeTrial("RUNNING"), FakeTrial("PENDING")])
    clock.now += 90
    watch.on_step_end(2, [FakeTrial("TERMINATED"), FakeTrial("PENDING")])
    assert not watch.stop_all()
    clock.now += 99
    watch.on_step_end(3, [FakeTrial("TERMINATED"), FakeTrial("PENDING")])
    assert not watch.stop_all()
    clock.now += 2
    watch.on_step_end(4, [FakeTrial("TERMINATED"), FakeTrial("PENDING")])
    assert watch.stop_all()
    PendingWatch.findings.pop("exp-b")


def test_no_waiting_trial_never_stops() -> None:
    clock = FakeClock()
    watch = PendingWatch("exp-c", 1, {"CPU": 1}, clock=clock)
    for step in range(3):
        clock.now += 10
        watch.on_step_end(step, [FakeTrial("TERMINATED"), FakeTrial("ERROR")])
    assert not watch.stop_all()


def test_a_restored_watch_starts_its_wait_afresh() -> None:
    import pickle

    clock = FakeClock()
    watch = PendingWatch("exp-d", 100, {"CPU": 1}, warned=True, clock=clock)
    watch.on_step_end(0, [FakeTrial("PENDING")])
    restored = pickle.loads(pickle.dumps(watch))
    assert restored._waiting_since is None, "another process's clock means nothing here"
    assert (restored.key, restored.timeout_s, restored.asked) == ("exp-d", 100, {"CPU": 1})
