"""Trials that wait for resources the cluster cannot give now.

On an autoscaling cluster a trial may wait while a node starts; on one that cannot grow (or
whose autoscaler cannot find the node type) it waits forever, and Ray Tune only logs a hint
every minute. ftray warns at the start when no node of the cluster can hold a trial, saying
what is missing, and `PendingWatch` stops the sweep when trials have waited
`search.pending_timeout` seconds with none running; the sweep then fails (exit 1) with
every run closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ray.tune import Callback
from ray.tune.stopper import Stopper

from ftray.config.spec import Spec
from ftray.log import get_logger

log = get_logger()

WARN_AFTER_S = 60.0
"""How long trials may wait with none running before the watch warns (a trial's actor
takes seconds to start even when the resources are there)."""


class PendingTimeout(RuntimeError):
    """Trials waited `search.pending_timeout` for resources and none ran: the sweep stopped."""


def trial_resources(spec: Spec) -> dict[str, float]:
    """What one trial asks Ray for, in Ray's resource names (CPU, GPU), zeros left out."""
    asked = spec.resources_per_trial
    return {name: amount for name, amount in (("CPU", asked.cpu), ("GPU", asked.gpu)) if amount}


def _amounts(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {amount:g}" for name, amount in resources.items()) or "nothing"


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds:g} s ({seconds / 60:g} min)"
    return f"{seconds:g} s"


def missing_resources(asked: Mapping[str, float], nodes: list[Mapping[str, float]]) -> str | None:
    """What no single node in `nodes` (each node's total resources) can give a trial asking
    for `asked`, or None when some node can hold it."""
    if any(all(node.get(name, 0.0) >= amount for name, amount in asked.items()) for node in nodes):
        return None
    short = []
    for name, amount in asked.items():
        largest = max((node.get(name, 0.0) for node in nodes), default=0.0)
        if largest < amount:
            short.append(f"{name} {amount:g} (the largest node has {largest:g})")
    if short:
        return ", ".join(short)
    return f"{_amounts(asked)} on one node (no node has all of them at once)"


def node_resources() -> list[dict[str, float]]:
    """The total resources of every alive node of the connected Ray cluster."""
    import ray

    return [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]


def shortfall_message(asked: Mapping[str, float]) -> str:
    """Why a trial asking for `asked` cannot start now, as the cluster looks at this moment."""
    import ray

    missing = missing_resources(asked, node_resources())
    if missing is not None:
        return f"each trial asks for {_amounts(asked)}; no node of the cluster has {missing}"
    free = {name: ray.available_resources().get(name, 0.0) for name in asked}
    return (
        f"each trial asks for {_amounts(asked)}; a node has that much but it is in use "
        f"(free now: {_amounts(free)})"
    )


def warn_if_unavailable(spec: Spec) -> bool:
    """On a cluster: warn, saying what is missing, when no node can hold a trial now.
    Returns whether it warned."""
    assert spec.search is not None
    asked = trial_resources(spec)
    missing = missing_resources(asked, node_resources())
    if missing is None:
        return False
    log.warning(
        f"each trial asks for {_amounts(asked)} and no node of the Ray cluster has that now: "
        f"missing {missing}. An autoscaling cluster may add a node; ftray waits at most "
        f"search.pending_timeout = {_duration(spec.search.pending_timeout)} for a trial to "
        "start, then stops the sweep (exit 1). Lower resources_per_trial or add a node type "
        "that has them."
    )
    return True


class PendingWatch(Callback, Stopper):
    """A Tune callback and stopper: stops the sweep once trials have waited `timeout_s` for
    resources while none ran.

    As a callback it sees every trial at each step of Tune's loop; as the stopper it asks
    Tune to stop everything. Tune pickles both with the experiment (and restores copies on
    resume), so the finding is kept per process, keyed by `key`, where every copy sees it.
    """

    findings: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        key: str,
        timeout_s: float,
        asked: Mapping[str, float],
        warned: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self.timeout_s = timeout_s
        self.asked = dict(asked)
        self.clock = clock
        self._warned = warned
        self._waiting_since: float | None = None
        self.findings.pop(key, None)

    @classmethod
    def finding_for(cls, key: str) -> str | None:
        """Why the watch on `key` stopped the sweep in this process, or None."""
        return cls.findings.get(key)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_waiting_since": None}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        waiting = sum(trial.status == "PENDING" for trial in trials)
        if not waiting or any(trial.status == "RUNNING" for trial in trials):
            self._waiting_since = None
            return
        now = self.clock()
        if self._waiting_since is None:
            self._waiting_since = now
        waited = now - self._waiting_since
        if not self._warned and waited >= min(WARN_AFTER_S, self.timeout_s):
            self._warned = True
            log.warning(
                f"{waiting} trial(s) have waited {waited:.0f} s for resources and none is "
                f"running: {shortfall_message(self.asked)}. The sweep stops after "
                f"search.pending_timeout = {_duration(self.timeout_s)} of this"
            )
        if waited >= self.timeout_s and self.key not in self.findings:
            self.findings[self.key] = (
                f"no trial could start for {waited:.0f} s (search.pending_timeout = "
                f"{_duration(self.timeout_s)}): {shortfall_message(self.asked)}; the sweep "
                "stopped. Lower resources_per_trial, add nodes that have them, or raise "
                "search.pending_timeout if the cluster needs longer to scale up"
            )

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.key in self.findings
