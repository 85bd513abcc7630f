"""Which Ray a sweep runs on: a Ray of its own, or the cluster `RAY_ADDRESS` names.

Without `RAY_ADDRESS`, `ftray sweep` starts a Ray for this process only (Ray's
`address="local"`), on loopback, whatever `ray start` left in Ray's current-cluster file.
`RAY_ADDRESS=auto` joins the cluster `ray start` records on this machine, any other value
joins that address (as under `ray job submit`, which sets it). `ray.init` waits forever for a
cluster that does not answer, so the head is checked first, in bounded time.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from ftray.log import get_logger

GCS_CHECK_TIMEOUT_S = 60.0
"""How long Ray's health check of the head may take before the sweep gives up (exit 1). The
check starts a Python that imports Ray: on a loaded 2-core machine (a job's driver beside
the head and its workers) 30 s was once not enough."""
PROBE_TIMEOUT_S = 10.0
"""How long one TCP connection to the cluster's address may take."""

START_WAIT_AT_EXIT_S = 120.0
"""How long a driver that exits while `start_ray_early`'s Ray still starts waits for it."""

RAY_INIT_IMPORTS = (
    "ray._common.usage.usage_lib",
    "ray._private.runtime_env.uv_runtime_env_hook",
    "ray._private.thirdparty.pynvml",
    "ray.autoscaler.v2.utils",
    "ray.dashboard.optional_deps",
)
"""Modules `ray.init` imports on its first call (Ray 2.60), imported before it runs in a
thread so that the thread and the driver never import the same modules at once."""

log = get_logger()
_starting: _RayStart | None = None
_own_ray = False


class _RayStart(threading.Thread):
    """`init_ray` in a thread that then stays alive: Ray starts its GCS and raylet with
    PR_SET_PDEATHSIG, so they are killed when the *thread* that started them ends. A daemon,
    so it never holds up the exit; Ray's exit handler stops the processes. Its exception, if
    any, is kept for `init_ray` to raise."""

    def __init__(self) -> None:
        super().__init__(name="ftray-ray", daemon=True)
        self.error: BaseException | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            _init_ray_now()
        except BaseException as exc:  # re-raised in the thread that waits for Ray
            self.error = exc
        finally:
            self.ready.set()
        if self.error is None:
            threading.Event().wait()  # keeps Ray's processes alive until the process exits

    def wait_started(self, timeout: float | None = None) -> None:
        self.ready.wait(timeout)


class _NotMainThread(logging.Filter):
    """Drops Ray's warning that a `ray.init` off the main thread sets no SIGTERM handler
    (`start_ray_early` sets the same handler itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def set_tune_environment() -> None:
    """The environment Ray Tune reads, set before Ray starts (values set already stay)."""
    # Trials checkpoint every epoch; Tune's advice to checkpoint less is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Save Tune's experiment state often (default: at most every 10 s), so a killed driver
    # loses little: trials it had just started but never saved are replaced on resume.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # Tune's newer console output prints a configuration box and a TensorBoard hint to
    # stdout whatever `verbose` says; the classic reporter honours verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's default loggers include TensorBoard's, whose import pulls torch into this
    # driver (seconds, for files nobody here reads); build_tuner adds the CSV and JSON ones.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def start_ray_early() -> None:
    """Start `init_ray` in a thread, so that Ray's start (seconds, mostly waiting for its
    processes) overlaps the driver's own preparation; `init_ray` waits for it."""
    global _starting
    import ray

    if _starting is not None or ray.is_initialized():
        return
    set_tune_environment()
    for module in RAY_INIT_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    if threading.current_thread() is threading.main_thread():
        # What ray.init sets on the main thread: SIGTERM (`ray job stop`) exits through
        # SystemExit, so open MLflow runs are closed.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        logging.getLogger("ray._private.worker").addFilter(_NotMainThread())
    _starting = _RayStart()
    _starting.start()
    # Runs before Ray's own exit handler (registered when ray was imported): a driver that
    # fails while Ray still starts lets it finish starting, so that handler stops all of it.
    atexit.register(_starting.wait_started, START_WAIT_AT_EXIT_S)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(signum)


def release_ray_in_background() -> threading.Thread | None:
    """Stop a Ray of this process's own in a thread (its processes take seconds to stop), so
    the driver's last work overlaps it; None when this process joined a cluster or started
    no Ray. The thread is not a daemon: the process exits once Ray has stopped."""
    global _own_ray
    import ray

    if not _own_ray or not ray.is_initialized():
        return None
    _own_ray = False
    stopping = threading.Thread(target=ray.shutdown, name="ftray-ray-shutdown")
    stopping.start()
    return stopping


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
    this process's own; raise ClusterUnreachable when the cluster does not answer. Waits for
    the start `start_ray_early` began, and raises what it raised."""
    global _starting
    if _starting is not None:
        starting, _starting = _starting, None
        starting.wait_started()
        if starting.error is not None:
            raise starting.error
        return
    _init_ray_now()


def _init_ray_now() -> None:
    global _own_ray
    import ray

    if ray.is_initialized():
        return
    given = os.environ.get("RAY_ADDRESS", "").strip()
    if given:
        join_cluster(given)
    else:
        start_local_ray()
        _own_ray = True


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


def ray_temp_root() -> Path:
    """Where Ray keeps its session folders and current-cluster file: $RAY_TMPDIR, else $TMPDIR
    (Linux), else /tmp; then `ray/` (Ray's own convention)."""
    root = os.environ.get("RAY_TMPDIR")
    if root is None and sys.platform.startswith("linux"):
        root = os.environ.get("TMPDIR")
    return Path(root or "/tmp") / "ray"


def recorded_cluster_address() -> str | None:
    """The address in Ray's current-cluster file (written by `ray start`, left behind by a head
    that died without `ray stop`), if any."""
    try:
        return (ray_temp_root() / "ray_current_cluster").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def join_cluster(given: str, check_timeout_s: float = GCS_CHECK_TIMEOUT_S) -> None:
    """`ray.init` on the cluster at `given` (host:port, `auto`, or `ray://host:port`), once
    its head answers; ClusterUnreachable, within a minute, when it does not."""
    import ray

    address = cluster_address(given)
    host, port = host_and_port(address)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterUnreachable(named(address, given), exc.strerror or str(exc)) from None
    if "://" not in address:
        # ray.init would wait forever for a port that answers but is no Ray head, or for a
        # head that refuses this token: Ray's health check, in a process of its own, is bounded.
        check_gcs_answers(named(address, given), address, check_timeout_s)
    log.info(f"joining the Ray cluster at {named(address, given)}")
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:
        raise ClusterUnreachable(named(address, given), first_line(exc)) from None


def check_gcs_answers(shown: str, address: str, timeout_s: float) -> None:
    """`ray health-check` of the head's GCS (token and Ray version included), in a child
    process killed after `timeout_s`."""
    command = [sys.executable, "-m", "ray.scripts.scripts", "health-check", "--address", address]
    try:
        checked = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ClusterUnreachable(shown, f"no answer from Ray's GCS in {timeout_s:g}s") from None
    if checked.returncode != 0:
        lines = checked.stderr.strip().splitlines() or [f"exit {checked.returncode}"]
        raise ClusterUnreachable(shown, f"Ray's health check failed: {lines[-1][:300]}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def named(address: str, given: str) -> str:
    """`address`, with the RAY_ADDRESS it came from when that differs (`auto`)."""
    return address if address == given else f"{address} (RAY_ADDRESS={given})"


def cluster_address(given: str) -> str:
    """The address to join for RAY_ADDRESS=`given`: `auto` is the cluster `ray start`
    recorded on this machine."""
    if given.startswith(("http://", "https://")):
        raise ClusterUnreachable(
            given,
            "RAY_ADDRESS is the dashboard's job-submission address, which `ray job submit` "
            "takes; `ftray sweep` joins a cluster at its GCS address (host:6379) or auto",
        )
    if given != "auto":
        return given
    recorded = recorded_cluster_address()
    if recorded is None:
        raise ClusterUnreachable(
            given,
            f"no cluster recorded by `ray start` in {ray_temp_root() / 'ray_current_cluster'}",
        )
    return recorded


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
