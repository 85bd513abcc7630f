"""Is `storage.tune_path` the same folder on every node of the Ray cluster?

Ray Tune writes a marker into the experiment folder from the driver and, before a trial on
another node saves its first checkpoint, checks that the marker is visible there; on a
worker with its own disk it is not, and every trial fails after its first epoch. ftray
checks the same thing before any trial starts: the driver writes a marker and a small task
pinned to each alive node looks for it. Nodes that join later (an autoscaling cluster that
starts with no workers) are checked as they join, by `StorageGuard`, which stops the sweep
when one cannot see the folder.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ray.tune.stopper import Stopper

from ftray.config.spec import Spec
from ftray.errors import InputError, Problem
from ftray.log import get_logger, quiet_after_stop

log = get_logger()

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "az://", "hdfs://")
CHECK_TIMEOUT_S = 60.0
MARKER_PREFIX = ".ftray-storage-check-"


def is_local_path(tune_path: str) -> bool:
    """Whether `tune_path` is a filesystem path (which then must be shared) rather than a URI."""
    return "://" not in tune_path or tune_path.startswith("file://")


@dataclass(frozen=True)
class NodeView:
    """What one node saw when it looked for the marker."""

    node_id: str
    address: str
    visible: bool


def _looks_for_marker(marker: str, token: str) -> tuple[str, bool]:
    """Runs on a node: (its hostname, whether the marker is there with the right content)."""
    try:
        seen = Path(marker).read_text() == token
    except OSError:
        seen = False
    return socket.gethostname(), seen


def alive_nodes() -> dict[str, str]:
    """node id -> IP address of every alive node of the connected Ray cluster."""
    import ray

    return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}


class StorageMarker:
    """A file with a random token under the storage folder, written by the driver."""

    def __init__(self, tune_path: str) -> None:
        root = Path(tune_path.removeprefix("file://"))
        root.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(16)
        self.path = root / f"{MARKER_PREFIX}{self.token[:12]}"
        self.path.write_text(self.token)

    def remove(self) -> None:
        """Delete the marker (missing is fine)."""
        with contextlib.suppress(OSError):
            self.path.unlink()

    def views(self, nodes: dict[str, str], timeout_s: float = CHECK_TIMEOUT_S) -> list[NodeView]:
        """Ask each node in `nodes` whether it sees the marker; a node that does not answer
        within `timeout_s` is left out (it is asked again when the guard next looks)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        look = ray.remote(num_cpus=0, max_retries=0)(_looks_for_marker)
        pending = {
            look.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
            ).remote(str(self.path), self.token): node_id
            for node_id in nodes
        }
        ready, not_ready = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
        for ref in not_ready:
            ray.cancel(ref, force=True)
        out = []
        for ref in ready:
            node_id = pending[ref]
            try:
                host, visible = ray.get(ref)
            except Exception:  # the node died or refused the task: ask again later
                continue
            out.append(NodeView(node_id, f"{nodes[node_id]} ({host})", visible))
        return out


def blind_node_message(tune_path: str, view: NodeView) -> str:
    """The error for a node that cannot see the storage folder."""
    return (
        f"storage.tune_path {tune_path} is not visible from node {view.address}, id "
        f"{view.node_id[:12]}: Ray Tune's trials on that node could not save checkpoints; "
        "use a shared filesystem mounted at the same path on every node (NFS, EFS, a "
        "ReadWriteMany volume) or an object store URI (s3://, gs://)"
    )


def check_visible_from_every_node(tune_path: str) -> tuple[list[str], int]:
    """(one message per node that cannot see `tune_path`, number of nodes asked).

    Only meaningful for a local path on a cluster of more than one node; callers skip the
    check otherwise.
    """
    marker = StorageMarker(tune_path)
    try:
        nodes = alive_nodes()
        views = marker.views(nodes)
    finally:
        marker.remove()
    return [blind_node_message(tune_path, v) for v in views if not v.visible], len(nodes)


class StorageGuard(Stopper):
    """A Ray Tune stopper that checks every node joining the cluster during the sweep.

    `stop_all()` runs on every step of Tune's loop; at most every `interval_s` it lists the
    alive nodes and asks the new ones whether they see the marker. The first node that does
    not stops the whole sweep, and `problem_for(tune_path)` says why. Picklable: Tune saves
    its stopper with the experiment and restores a copy on resume, so the finding is kept per
    process, keyed by the storage path, where every copy reports it.
    """

    problems: ClassVar[dict[str, str]] = {}

    def __init__(self, tune_path: str, known_nodes: set[str], interval_s: float = 5.0) -> None:
        self.tune_path = tune_path
        self.known = set(known_nodes)
        self.interval_s = interval_s
        self._next_look = 0.0
        self._marker: StorageMarker | None = None

    @property
    def problem(self) -> str | None:
        """Why the sweep was stopped, or None."""
        return self.problems.get(self.tune_path)

    @classmethod
    def problem_for(cls, tune_path: str) -> str | None:
        """What a guard on `tune_path` found in this process, or None."""
        return cls.problems.get(tune_path)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_marker": None, "_next_look": 0.0}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        if self.problem is not None:
            return True
        now = time.monotonic()
        if now < self._next_look:
            return False
        self._next_look = now + self.interval_s
        nodes = {k: v for k, v in alive_nodes().items() if k not in self.known}
        if not nodes:
            return False
        if self._marker is None or not self._marker.path.exists():
            try:
                self._marker = StorageMarker(self.tune_path)
            except OSError as exc:
                self.problems[self.tune_path] = f"cannot write to {self.tune_path}: {exc}"
                return True
        for view in self._marker.views(nodes):
            self.known.add(view.node_id)
            if not view.visible and self.problem is None:
                self.problems[self.tune_path] = blind_node_message(self.tune_path, view)
                # Trials already on that node fail to save and Ray prints their tracebacks;
                # the sweep's one error line says why.
                quiet_after_stop()
        return self.problem is not None

    def close(self) -> None:
        """Remove the marker this guard wrote, if any."""
        if self._marker is not None:
            self._marker.remove()


def storage_problem(spec: Spec, message: str) -> Problem:
    """A problem with the storage folder, at `storage.tune_path`'s line when the spec sets it."""
    if spec.source.sets(("storage", "tune_path")):
        return spec.source.problem(("storage", "tune_path"), message)
    return Problem(
        str(spec.source.path),
        None,
        f"{message} (storage.tune_path is not set, so Tune writes to a folder on the "
        "driver's machine; add a storage: section)",
    )


def guard_shared_storage(spec: Spec, storage_root: str) -> StorageGuard | None:
    """Check that a local `storage_root` is the same folder on every node of the cluster.

    InputError (exit 2) when a node cannot see it. Returns the Tune stopper that checks
    nodes joining later, or None when there is nothing to guard (an object store URI, or
    a Ray of this process's own, which has one node).
    """
    if not is_local_path(storage_root):
        return None
    nodes = alive_nodes()
    if len(nodes) > 1:
        try:
            blind, asked = check_visible_from_every_node(storage_root)
        except OSError as exc:
            raise InputError(
                [storage_problem(spec, f"cannot write to storage.tune_path {storage_root}: {exc}")]
            ) from None
        if blind:
            raise InputError([storage_problem(spec, message) for message in blind])
        log.info(f"storage {storage_root} is visible from all {asked} nodes")
    elif not os.environ.get("RAY_ADDRESS"):
        return None
    else:
        log.warning(
            f"the Ray cluster has one node now and {storage_root} is a local folder: "
            "nodes that join later (autoscaling) are checked as they join, and the sweep stops "
            "if one of them cannot see it"
        )
    return StorageGuard(storage_root, set(nodes))
