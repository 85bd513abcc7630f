"""Which Ray a sweep joins, and how joining a cluster that does not answer ends."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

import pytest

from ftray.sweep.ray_session import ClusterUnreachable, bootstrap_address, host_and_port


def test_the_dashboard_address_is_refused_with_what_to_use_instead() -> None:
    with pytest.raises(ClusterUnreachable) as caught:
        bootstrap_address("http://127.0.0.1:8265")
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


def test_a_port_that_accepts_but_never_answers_ends_the_process_at_the_timeout() -> None:
    """ray.init would wait forever here; the watchdog prints the error and exits 1."""
    with socket.socket() as silent:
        silent.bind(("0.0.0.0", 0))
        silent.listen()
        port = silent.getsockname()[1]
        script = textwrap.dedent(
            f"""
            from ftray.sweep.ray_session import join_cluster
            join_cluster("127.0.0.1:{port}", timeout_s=5)
            print("joined")
            """
        )
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-3000:]
    assert "joined" not in result.stdout
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: cannot reach the Ray cluster at ")
    assert f":{port} (RAY_ADDRESS=127.0.0.1:{port}): ray.init did not connect within 5s" in error
    assert "head is alive" in error and "RAY_AUTH_TOKEN" in error and "port" in error
    assert elapsed < 60, f"took {elapsed:.0f}s"
