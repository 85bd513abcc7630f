"""`ftray sweep` starts its own Ray in a thread while the driver sets up (`start_ray_early`),
and stops it in the background once the winner is registered (`release_ray_in_background`).
Ray itself is faked: these tests are about the thread, not about Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ftray.sweep import ray_session


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """`ray.init` records its calls (and runs `state["init"]` when set); the module's state
    and the SIGTERM handler are put back afterwards."""
    import ray

    state: dict[str, Any] = {"calls": [], "init": None, "initialized": False, "shutdowns": 0}

    def init(**kwargs: Any) -> None:
        state["calls"].append({"kwargs": kwargs, "env": dict(os.environ)})
        if state["init"] is not None:
            state["init"]()
        state["initialized"] = True

    def shutdown() -> None:
        state["shutdowns"] += 1

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", shutdown)
    monkeypatch.setattr(ray, "is_initialized", lambda: state["initialized"])
    monkeypatch.setattr(ray_session, "_starting", None)
    monkeypatch.setattr(ray_session, "_own_ray", False)
    for name in ("RAY_AIR_NEW_OUTPUT", "TUNE_GLOBAL_CHECKPOINT_S"):
        monkeypatch.delenv(name, raising=False)
    handler = signal.getsignal(signal.SIGTERM)
    yield state
    signal.signal(signal.SIGTERM, handler)


def test_what_ray_starts_outlives_the_start(fake_ray: dict[str, Any]) -> None:
    """Ray starts its GCS and raylet with PR_SET_PDEATHSIG, which kills them when the thread
    that started them ends: the starting thread stays alive, or the sweep loses its Ray."""
    from ray._private.utils import set_kill_on_parent_death_linux

    children: list[subprocess.Popen[bytes]] = []

    def start_processes() -> None:
        children.append(
            subprocess.Popen(["sleep", "60"], preexec_fn=set_kill_on_parent_death_linux)
        )

    fake_ray["init"] = start_processes
    ray_session.start_ray_early()
    ray_session.init_ray()
    try:
        time.sleep(0.5)
        assert children[0].poll() is None, "Ray's processes died with the thread that started them"
    finally:
        children[0].kill()
        children[0].wait()
    (call,) = fake_ray["calls"]
    assert call["kwargs"]["address"] == "local"
    # Tune's settings are in the environment before Ray's processes start.
    assert call["env"]["RAY_AIR_NEW_OUTPUT"] == "0"
    assert call["env"]["TUNE_GLOBAL_CHECKPOINT_S"] == "2"


def test_init_ray_raises_what_the_early_start_raised(fake_ray: dict[str, Any]) -> None:
    def fail() -> None:
        raise RuntimeError("raylet did not start")

    fake_ray["init"] = fail
    ray_session.start_ray_early()
    with pytest.raises(RuntimeError, match="raylet did not start"):
        ray_session.init_ray()
    assert ray_session._starting is None


def test_sigterm_still_exits_through_system_exit(fake_ray: dict[str, Any]) -> None:
    """ray.init sets this handler only on the main thread; the early start sets it itself, so
    `ray job stop` still closes the sweep's MLflow runs."""
    ray_session.start_ray_early()
    ray_session.init_ray()
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    with pytest.raises(SystemExit):
        handler(signal.SIGTERM, None)


def test_an_own_ray_is_stopped_in_the_background(fake_ray: dict[str, Any]) -> None:
    ray_session.start_ray_early()
    ray_session.init_ray()
    stopping = ray_session.release_ray_in_background()
    assert stopping is not None
    stopping.join(10)
    assert fake_ray["shutdowns"] == 1
    assert ray_session.release_ray_in_background() is None  # once


def test_a_joined_cluster_is_left_alone(
    fake_ray: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    joined: list[str] = []
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    monkeypatch.setattr(ray_session, "join_cluster", joined.append)
    fake_ray["initialized"] = True  # what join_cluster's ray.init leaves
    ray_session._init_ray_now()  # already initialized: nothing joined again
    fake_ray["initialized"] = False
    ray_session._init_ray_now()
    assert joined == ["10.0.0.5:6379"]
    fake_ray["initialized"] = True
    assert ray_session.release_ray_in_background() is None
    assert fake_ray["shutdowns"] == 0
