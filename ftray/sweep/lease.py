"""A lease on every running sweep: one driver at a time continues a sweep.

While its driver lives, a sweep's parent run (or an each-step run) carries the tag
`ftray.lease`: JSON with the driver's host, pid, Ray job (when it was submitted as one), a
token of its own, the time of its last heartbeat and how long the lease lasts without one.
A thread of the driver renews the heartbeat; the driver deletes the tag when it ends.

Every ftray process that reads the store sees it: `ftray sweep --resume`, a plain `ftray
sweep` and `--each-step` of the same spec refuse a sweep whose lease is live (SweepRunning,
exit 2), before the sweep uses Ray. A lease with no heartbeat for its whole length (a
driver killed with SIGKILL, a lost node) has lapsed, and `--resume` takes the sweep over.

Heartbeats are the writer's wall clock, read against the reader's: hosts of one cluster
keep their clocks within seconds of each other, and a lease lasts minutes.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from ftray.log import get_logger
from ftray.tracking.tags import LEASE

LEASE_SECONDS_ENV = "FTRAY_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 120.0
"""How long a lease lasts without a heartbeat. A driver renews it six times within that, so
a store that stops answering for a while (a tracking server restarting) or a driver busy
with a thousand trials does not lose it; a killed driver's sweep can be resumed two
minutes after its last heartbeat."""
RENEWALS_PER_LEASE = 6
CLAIM_SETTLE_SECONDS = 1.0
"""How long a driver taking over a sweep waits before it reads the lease back: of two
drivers taking it over at once, the one whose token is not there gives way."""
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""What Ray's job supervisor gives a submitted job's entrypoint: JSON with the job's
metadata, its submission id among them."""

log = get_logger()


def lease_seconds() -> float:
    """The length of a lease this driver takes: FTRAY_LEASE_SECONDS, else two minutes."""
    raw = os.environ.get(LEASE_SECONDS_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_LEASE_SECONDS
    except ValueError:
        value = DEFAULT_LEASE_SECONDS
    return max(value, 2.0)


def ray_job_id() -> str | None:
    """The submission id of the Ray job this process is the entrypoint of, or None."""
    try:
        config = json.loads(os.environ.get(RAY_JOB_CONFIG_ENV, "") or "{}")
    except ValueError:
        return None
    job = (config.get("metadata") or {}).get("job_submission_id")
    return str(job) if job else None


@dataclass(frozen=True)
class LeaseInfo:
    """What a run's `ftray.lease` tag says."""

    host: str
    pid: int
    token: str
    heartbeat: float
    """Unix time of the last renewal."""
    seconds: float
    """How long the lease lasts without a renewal."""
    job: str | None = None

    def to_tag(self) -> str:
        return json.dumps(
            {
                "host": self.host,
                "pid": self.pid,
                "job": self.job,
                "token": self.token,
                "heartbeat": round(self.heartbeat, 3),
                "seconds": self.seconds,
            }
        )

    @classmethod
    def from_tag(cls, value: str | None) -> LeaseInfo | None:
        """The lease a tag holds; None for no tag or one ftray cannot read."""
        if not value:
            return None
        try:
            data = json.loads(value)
            return cls(
                host=str(data["host"]),
                pid=int(data["pid"]),
                token=str(data["token"]),
                heartbeat=float(data["heartbeat"]),
                seconds=float(data["seconds"]),
                job=data.get("job") or None,
            )
        except (ValueError, KeyError, TypeError):
            return None

    def age(self, now: float | None = None) -> float:
        """Seconds since the last heartbeat (0 for one stamped ahead of this clock)."""
        return max(0.0, (time.time() if now is None else now) - self.heartbeat)

    def live(self, now: float | None = None) -> bool:
        return self.age(now) < self.seconds

    def renewed(self) -> LeaseInfo:
        return LeaseInfo(self.host, self.pid, self.token, time.time(), self.seconds, self.job)

    def holder(self) -> str:
        """`host myhost, pid 1234`."""
        return f"host {self.host}, pid {self.pid}"

    def how_to_stop(self) -> str:
        """The command that stops the driver so that Ray Tune saves the sweep's state."""
        if self.job:
            return f"ray job stop {self.job}"
        return f"kill -INT {self.pid} on {self.host}"


def new_lease() -> LeaseInfo:
    """A lease for this process, its heartbeat now."""
    return LeaseInfo(
        host=socket.gethostname(),
        pid=os.getpid(),
        token=secrets.token_hex(8),
        heartbeat=time.time(),
        seconds=lease_seconds(),
        job=ray_job_id(),
    )


class SweepRunning(Exception):
    """The sweep a command would continue, or start beside, has a live lease: its driver
    runs. The CLI prints it as one `error:` line, exit 2."""

    def __init__(self, run_id: str, lease: LeaseInfo) -> None:
        self.run_id = run_id
        self.lease = lease
        super().__init__(self.describe())

    def describe(self) -> str:
        lease = self.lease
        return (
            f"sweep {self.run_id} is running ({lease.holder()}, last heartbeat "
            f"{lease.age():.0f} s ago); wait for it, or stop it with: {lease.how_to_stop()} "
            f"(a driver that died is taken over by --resume {lease.seconds:.0f} s after its "
            "last heartbeat)"
        )


def lease_of(run: Any) -> LeaseInfo | None:
    """The lease on a parent run as it was read, or None."""
    return LeaseInfo.from_tag(run.data.tags.get(LEASE))


def live_lease(run: Any | None) -> LeaseInfo | None:
    """The live lease of a parent run that has not ended, or None: no lease, a lapsed one,
    or a run whose driver ended it (a lease left by a driver killed after it ended its run
    holds nothing)."""
    if run is None or run.info.status in ("FINISHED", "FAILED"):
        return None
    lease = lease_of(run)
    return lease if lease is not None and lease.live() else None


def refuse_live(run: Any | None) -> None:
    """SweepRunning when `run` (the spec's latest parent run) has a live lease."""
    lease = live_lease(run)
    if lease is not None:
        raise SweepRunning(run.info.run_id, lease)


def note_lapsed(run: Any) -> None:
    """Log that --resume takes over a sweep whose driver's lease lapsed."""
    lease = lease_of(run)
    if lease is not None and run.info.status == "RUNNING":
        log.warning(
            f"sweep {run.info.run_name}: its driver ({lease.holder()}) sent no heartbeat for "
            f"{lease.age():.0f} s (its lease lasts {lease.seconds:.0f} s); taking it over"
        )


class Lease:
    """This driver's lease on a parent run, renewed by a daemon thread until `release`."""

    def __init__(self, uri: str, run_id: str, info: LeaseInfo) -> None:
        self.uri = uri
        self.run_id = run_id
        self.info = info
        self.lost: LeaseInfo | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_new_run(cls, uri: str) -> tuple[Lease, dict[str, str]]:
        """A lease for a run about to be created, and the tag to create it with (so that no
        reader ever sees the new run without its lease)."""
        info = new_lease()
        return cls(uri, "", info), {LEASE: info.to_tag()}

    @classmethod
    def take_over(cls, client: Any, run: Any) -> Lease:
        """Take the lease of `run` (a sweep being resumed): write ours, wait, read it back.
        SweepRunning when another driver's live lease is there instead."""
        refuse_live(run)
        note_lapsed(run)
        lease = cls(client.tracking_uri, run.info.run_id, new_lease())
        client.set_tag(run.info.run_id, LEASE, lease.info.to_tag())
        time.sleep(CLAIM_SETTLE_SECONDS)
        current = client.get_run(run.info.run_id)
        there = lease_of(current)
        if there is not None and there.token != lease.info.token and there.live():
            raise SweepRunning(run.info.run_id, there)
        return lease

    def start(self, run_id: str | None = None) -> Lease:
        """Renew the heartbeat in a daemon thread from now on."""
        if run_id:
            self.run_id = run_id
        self._thread = threading.Thread(target=self._renew, name="ftray-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        from mlflow import MlflowClient

        client = MlflowClient(self.uri)
        interval = self.info.seconds / RENEWALS_PER_LEASE
        while not self._stop.wait(interval):
            try:
                self.renew_once(client)
            except Exception as exc:  # the store did not answer: the next renewal tries again
                late = self.info.age()
                log.warning(
                    f"could not renew the lease of sweep run {self.run_id} ({exc}); its last "
                    f"heartbeat is {late:.0f} s old, and it lapses at {self.info.seconds:.0f} s"
                )
            if self.lost is not None:
                log.error(
                    f"the sweep was taken over by {self.lost.holder()} after this driver's "
                    "lease lapsed; stopping this driver (Ray Tune saves its state)"
                )
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: Tune saves and stops
                return

    def renew_once(self, client: Any) -> None:
        """One renewal: stop (setting `lost`) when another driver's lease is there now."""
        there = lease_of(client.get_run(self.run_id))
        if there is not None and there.token != self.info.token:
            self.lost = there
            return
        renewed = self.info.renewed()
        client.set_tag(self.run_id, LEASE, renewed.to_tag())
        self.info = renewed

    def release(self, client: Any) -> None:
        """Stop renewing and delete the lease (unless another driver holds it now)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.lost is not None or not self.run_id:
            return
        try:
            there = lease_of(client.get_run(self.run_id))
            if there is not None and there.token == self.info.token:
                client.delete_tag(self.run_id, LEASE)
        except Exception as exc:  # a lease left behind lapses by itself
            log.warning(f"could not release the lease of sweep run {self.run_id}: {exc}")
