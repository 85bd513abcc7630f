"""Which Ray a sweep runs on: a Ray of its own, or the cluster `RAY_ADDRESS` names.

Without `RAY_ADDRESS`, `ftray sweep` starts a Ray for this process only (Ray's
`address="local"`), on loopback, whatever `ray start` left in Ray's current-cluster file.
`RAY_ADDRESS=auto` joins the cluster `ray start` records on this machine, any other value
joins that address (as under `ray job submit`, which sets it). `ray.init` waits forever for a
cluster that does not answer, so joining is checked first and bounded.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from urllib.parse import urlsplit

from ftray.log import get_logger

JOIN_TIMEOUT_S = 45.0
"""How long joining a cluster may take before the sweep gives up (exit 1)."""
PROBE_TIMEOUT_S = 10.0
"""How long one TCP connection to the cluster's address may take."""

log = get_logger()


class ClusterUnreachable(RuntimeError):
    """The Ray cluster named by RAY_ADDRESS does not answer (exit 1)."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        super().__init__(
            f"cannot reach the Ray cluster at {address}: {reason}. Check that its head is alive "
            "(`ray status` on the head), that the port is the head's GCS port (`ray start "
            "--port`, default 6379; not the dashboard's 8265, which is for `ray job submit`), "
            "and that RAY_AUTH_MODE=token and RAY_AUTH_TOKEN match the head's token (Ray >= 2.52 "
            "authenticates). Unset RAY_ADDRESS to run the sweep on a Ray of its own"
        )


def init_ray() -> None:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), else start a Ray of
    this process's own; raise ClusterUnreachable when the cluster does not answer."""
    import ray

    if ray.is_initialized():
        return
    given = os.environ.get("RAY_ADDRESS", "").strip()
    if given:
        join_cluster(given)
    else:
        start_local_ray()


def start_local_ray() -> None:
    """A Ray for this process only, on 127.0.0.1, never the cluster `ray start` recorded."""
    import ray

    recorded = recorded_cluster_address()
    joined_instead = (
        f"; `ray start` recorded a cluster at {recorded}: set RAY_ADDRESS=auto to join it"
        if recorded
        else "; set RAY_ADDRESS=auto (or an address) to join a cluster"
    )
    log.info(
        f"starting a Ray of this sweep's own on 127.0.0.1 (RAY_ADDRESS is unset{joined_instead})"
    )
    ray.init(
        address="local",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )


def recorded_cluster_address() -> str | None:
    """The address in Ray's current-cluster file (written by `ray start`, left behind by a head
    that died without `ray stop`), if any."""
    from ray._common.utils import get_ray_address_file

    try:
        with open(get_ray_address_file(None), encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def join_cluster(given: str, timeout_s: float = JOIN_TIMEOUT_S) -> None:
    """`ray.init` on the cluster at `given` (an address, `auto`, or `ray://host:port`), ending
    within `timeout_s` when it does not answer."""
    import ray

    address = bootstrap_address(given)
    host, port = host_and_port(address)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterUnreachable(named(address, given), exc.strerror or str(exc)) from None
    log.info(f"joining the Ray cluster at {address} (RAY_ADDRESS={given})")
    # The port answers, but ray.init can still wait forever inside Ray's C++ core (another
    # service on that port, a head that refuses this token): a watchdog ends the process.
    watchdog = threading.Timer(timeout_s, give_up_joining, args=(named(address, given), timeout_s))
    watchdog.daemon = True
    watchdog.start()
    try:
        ray.init(address=given, log_to_driver=False)
    except ConnectionError as exc:
        raise ClusterUnreachable(named(address, given), str(exc).splitlines()[0]) from None
    finally:
        watchdog.cancel()


def named(address: str, given: str) -> str:
    """`address`, with the RAY_ADDRESS it came from when that differs (`auto`, localhost)."""
    return address if address == given else f"{address} (RAY_ADDRESS={given})"


def give_up_joining(address: str, timeout_s: float) -> None:
    """Print the error and end the process: `ray.init` cannot be interrupted."""
    reason = f"ray.init did not connect within {timeout_s:g}s"
    print(f"error: {ClusterUnreachable(address, reason)}", file=sys.stderr, flush=True)
    os._exit(1)


def bootstrap_address(given: str) -> str:
    """The address Ray will connect to for RAY_ADDRESS=`given` (`auto` resolved as Ray does)."""
    if given.startswith(("http://", "https://")):
        raise ClusterUnreachable(
            given,
            "RAY_ADDRESS is the dashboard's job-submission address, which `ray job submit` "
            "takes; `ftray sweep` joins a cluster at its GCS address (host:6379) or auto",
        )
    if "://" in given:  # ray://host:port, the Ray Client
        return given
    from ray._private.services import canonicalize_bootstrap_address

    try:
        address = canonicalize_bootstrap_address(given)
    except (ConnectionError, ValueError) as exc:
        raise ClusterUnreachable(given, str(exc).splitlines()[0]) from None
    if address is None:
        raise ClusterUnreachable(given, "no running Ray cluster found")
    return address


def host_and_port(address: str) -> tuple[str, int]:
    """(host, port) of `host:port` or `scheme://host:port`."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.hostname is None or port is None:
        raise ClusterUnreachable(address, "not host:port")
    return parts.hostname, port
