"""A trial waits for its share of a GPU's memory, not the whole device, before loading."""

from __future__ import annotations

import pytest

import ftray.models.backend
from ftray.models.backend import gpu_share, wait_for_gpu_share

GIB = 2**30


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    ("asked", "share"), [(0.25, 0.25), (0.5, 0.5), (1, 1.0), (2, 1.0), (0, 1.0)]
)
def test_the_share_is_the_fraction_asked_below_one_gpu_else_the_whole_device(
    asked: float, share: float
) -> None:
    assert gpu_share(asked) == share


def one_gpu_with_free(free_gib: float, polls: list[float], clock: FakeClock):  # noqa: ANN201
    def mem_get_info() -> tuple[int, int]:
        polls.append(clock.now)
        return int(free_gib * GIB), 80 * GIB

    return lambda: mem_get_info


@pytest.mark.parametrize(
    ("asked", "free_gib", "waits"),
    [
        (0.25, 20, False),  # three trials of a quarter each hold 60 GiB: the fourth starts
        (0.25, 17, True),  # less than 90% of a quarter (18 GiB) is free
        (0.5, 40, False),
        (1, 60, True),  # a whole-GPU trial waits for 90% of the device
        (1, 75, False),
    ],
)
def test_a_trial_waits_only_for_its_share_of_the_gpu(
    monkeypatch: pytest.MonkeyPatch, asked: float, free_gib: float, waits: bool
) -> None:
    clock, polls = FakeClock(), []
    monkeypatch.setattr(
        ftray.models.backend, "gpu_memory_info", one_gpu_with_free(free_gib, polls, clock)
    )
    monkeypatch.setattr(ftray.models.backend, "release_cached_gpu_memory", lambda: None)
    free = wait_for_gpu_share(asked, timeout_s=10, poll_s=2.0, sleep=clock.sleep, clock=clock)
    assert free is not waits
    assert (len(polls) > 1) is waits, polls


def test_without_cuda_nothing_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ftray.models.backend, "gpu_memory_info", lambda: None)
    assert wait_for_gpu_share(0.25, timeout_s=1e9) is True
