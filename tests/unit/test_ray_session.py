"""Which Ray a sweep joins, and how joining a cluster that does not answer ends."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from ftray.sweep.ray_session import (
    ClusterUnreachable,
    cluster_address,
    host_and_port,
    join_cluster,
    recorded_cluster_address,
)


def test_the_dashboard_address_is_refused_with_what_to_use_instead() -> None:
    with pytest.raises(ClusterUnreachable) as caught:
        cluster_address("http://127.0.0.1:8265")
    message = str(caught.value)
    assert message.startswith("cannot reach the Ray cluster at http://127.0.0.1:8265: ")
    assert "ray job submit" in message and "GCS address" in message


@pytest.mark.parametrize(
    ("address", "expected"),
    [("10.0.0.5:6379", ("10.0.0.5", 6379)), ("ray://head:10001", ("head", 10001))],
)
def test_host_and_port(address: str, expected: tuple[str, int]) -> None:
    assert host_and_port(address) == expected


@pytest.mark.parametrize("address", ["10.0.0.5", "head:port"])
def test_an_address_without_a_port_is_unreachable(address: str) -> None:
    with pytest.raises(ClusterUnreachable, match="not host:port"):
        host_and_port(address)


def test_a_port_that_accepts_but_never_answers_is_unreachable_in_bounded_time() -> None:
    """ray.init would wait forever here; Ray's health check, in a child process, gives up."""
    with socket.socket() as silent:
        silent.bind(("0.0.0.0", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ClusterUnreachable) as caught:
            join_cluster(f"127.0.0.1:{port}", check_timeout_s=5)
        elapsed = time.monotonic() - started
    message = str(caught.value)
    assert message.startswith(
        f"cannot reach the Ray cluster at 127.0.0.1:{port}: no answer from Ray's GCS in 5s. "
    ), message
    assert "head is alive" in message and "RAY_AUTH_TOKEN" in message and "GCS port" in message
    assert elapsed < 30, f"took {elapsed:.0f}s"


def test_auto_joins_the_cluster_ray_start_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    with pytest.raises(ClusterUnreachable, match="no cluster recorded by `ray start` in "):
        cluster_address("auto")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.0.0.5:6379\n")
    assert recorded_cluster_address() == "10.0.0.5:6379"
    assert cluster_address("auto") == "10.0.0.5:6379"
    assert cluster_address("10.0.0.6:6379") == "10.0.0.6:6379"


def test_a_dead_recorded_cluster_is_named_with_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(dead)
    with pytest.raises(ClusterUnreachable) as caught:
        join_cluster("auto")
    assert str(caught.value).startswith(
        f"cannot reach the Ray cluster at {dead} (RAY_ADDRESS=auto): Connection refused. "
    )
