"""A sweep's lease: a live driver's sweep is neither resumed nor started again beside it; a
lapsed lease is taken over; a driver renews its own and lets only its own go. Checked
against runs as MLflow records them, without Ray (the e2e test is tests/e2e/test_lease.py)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ftray.config import load_spec
from ftray.sweep import lease as lease_module
from ftray.sweep.lease import Lease, LeaseInfo, SweepRunning, live_lease, ray_job_id
from ftray.sweep.resume import UnfinishedSweep
from ftray.tracking.tags import LEASE
from tests.conftest import run_cli
from tests.unit.test_resume import RAN_WITH, SPEC, continue_with, record_sweep


def lease_tag(age: float, seconds: float = 120.0, token: str = "other", job: str | None = None):
    return LeaseInfo("node-7", 4242, token, time.time() - age, seconds, job).to_tag()


def leave_running(uri: str, tag: str | None) -> str:
    """A recorded sweep left RUNNING, with the lease tag `tag` (None: no lease)."""
    run_id = record_sweep(uri, RAN_WITH, status="KILLED")
    client = MlflowClient(uri)
    client.update_run(run_id, status="RUNNING")
    if tag is not None:
        client.set_tag(run_id, LEASE, tag)
    return run_id


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def no_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lease_module, "CLAIM_SETTLE_SECONDS", 0.0)


def test_a_lease_tag_reads_back_and_lapses_after_its_length() -> None:
    info = LeaseInfo.from_tag(lease_tag(age=10, seconds=30, job="raysubmit_1"))
    assert info is not None and (info.host, info.pid, info.job) == ("node-7", 4242, "raysubmit_1")
    assert info.live() and 9 < info.age() < 12
    assert not LeaseInfo.from_tag(lease_tag(age=31, seconds=30)).live()
    assert info.how_to_stop() == "ray job stop raysubmit_1"
    assert LeaseInfo.from_tag(lease_tag(0)).how_to_stop() == "kill -INT 4242 on node-7"
    for unreadable in (None, "", "not json", json.dumps({"host": "h"})):
        assert LeaseInfo.from_tag(unreadable) is None


def test_a_heartbeat_ahead_of_this_clock_is_no_older_than_now() -> None:
    info = LeaseInfo.from_tag(lease_tag(age=-50, seconds=30))
    assert info is not None and info.age() == 0 and info.live()


def test_resume_and_a_plain_sweep_refuse_a_live_sweep_and_name_its_driver(store: str) -> None:
    run_id = leave_running(store, lease_tag(age=5))
    for resume in (True, False):
        with pytest.raises(SweepRunning) as info:
            continue_with(store, RAN_WITH, resume=resume)
        message = info.value.describe()
        assert re.fullmatch(
            rf"sweep {run_id} is running \(host node-7, pid 4242, last heartbeat \d+ s ago\); "
            r"wait for it, or stop it with: kill -INT 4242 on node-7 \(a driver that died is "
            r"taken over by --resume 120 s after its last heartbeat\)",
            message,
        ), message
    # --new starts another sweep beside it: a choice the user made.
    assert continue_with(store, RAN_WITH, resume=False, new=True) is None


def test_a_lapsed_lease_is_taken_over_by_resume_only(store: str) -> None:
    run_id = leave_running(store, lease_tag(age=200))
    with pytest.raises(UnfinishedSweep):
        continue_with(store, RAN_WITH, resume=False)
    resumed = continue_with(store, RAN_WITH)
    assert resumed.info.run_id == run_id
    client = MlflowClient(store)
    taken = Lease.take_over(client, resumed)
    there = LeaseInfo.from_tag(client.get_run(run_id).data.tags[LEASE])
    assert there is not None and there.token == taken.info.token and there.live()


def test_an_ended_run_holds_no_lease_and_an_older_sweep_none(store: str) -> None:
    run_id = leave_running(store, lease_tag(age=1))
    client = MlflowClient(store)
    client.set_terminated(run_id, "FINISHED")
    assert live_lease(client.get_run(run_id)) is None
    assert live_lease(client.get_run(leave_running(store, None))) is None


def test_of_two_drivers_taking_over_at_once_the_second_gives_way(store: str) -> None:
    run_id = leave_running(store, lease_tag(age=500))
    client = MlflowClient(store)
    run = client.get_run(run_id)

    class Racing:
        """The store as a driver sees it when another wrote its lease just after this one."""

        tracking_uri = store

        def set_tag(self, *args) -> None:
            client.set_tag(*args)
            client.set_tag(run_id, LEASE, lease_tag(age=0, token="faster"))

        def get_run(self, run_id: str):
            return client.get_run(run_id)

    with pytest.raises(SweepRunning) as info:
        Lease.take_over(Racing(), run)
    assert info.value.lease.token == "faster"


def test_a_driver_renews_its_lease_and_releases_only_its_own(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTRAY_LEASE_SECONDS", "3")
    client = MlflowClient(store)
    experiment = client.create_experiment("leased")
    lease, tags = Lease.for_new_run(store)
    run_id = client.create_run(experiment, tags=tags).info.run_id
    first = LeaseInfo.from_tag(client.get_run(run_id).data.tags[LEASE])
    assert first is not None and first.seconds == 3.0
    lease.start(run_id)
    time.sleep(1.5)  # a renewal every half second
    renewed = LeaseInfo.from_tag(client.get_run(run_id).data.tags[LEASE])
    assert renewed is not None and renewed.token == first.token
    assert renewed.heartbeat > first.heartbeat
    lease.release(client)
    assert LEASE not in client.get_run(run_id).data.tags

    # A lease another driver holds now is left where it is, and this driver learns it lost.
    lease, tags = Lease.for_new_run(store)
    run_id = client.create_run(experiment, tags=tags).info.run_id
    lease.run_id = run_id
    client.set_tag(run_id, LEASE, lease_tag(age=0, token="taker"))
    lease.renew_once(client)
    assert lease.lost is not None and lease.lost.token == "taker"
    lease.release(client)
    assert LeaseInfo.from_tag(client.get_run(run_id).data.tags[LEASE]).token == "taker"


def test_a_submitted_job_is_named_by_its_submission_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert ray_job_id() is None
    config = {"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_abc"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(config))
    assert ray_job_id() == "raysubmit_abc"


def test_the_cli_refuses_to_resume_a_live_sweep_in_one_line(store: str, tmp_path: Path) -> None:
    run_id = leave_running(store, lease_tag(age=3, job="raysubmit_xyz"))
    result = run_cli(
        "sweep", str(SPEC), "--resume", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": store}
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and result.stdout == ""
    [line] = [row for row in result.stderr.splitlines() if row.startswith("error:")]
    assert line.startswith(f"error: {SPEC}: sweep {run_id} is running (host node-7, pid 4242, ")
    assert "wait for it, or stop it with: ray job stop raysubmit_xyz" in line
    assert MlflowClient(store).get_run(run_id).info.status == "RUNNING"


def test_each_step_refuses_a_live_each_step_run(tmp_path: Path) -> None:
    from ftray.sweep.each_step import run_each_step
    from tests.unit.test_each_step import STEPS_SPEC, record_each_step_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    outer = record_each_step_run(client, ["characters", "relationships"])  # left RUNNING
    client.set_tag(outer, LEASE, lease_tag(age=2))
    spec = load_spec(STEPS_SPEC, [f"tracking.uri={uri}"])
    for resume in (True, False):
        with pytest.raises(SweepRunning):
            run_each_step(spec, [], resume=resume)
    started = run_each_step(spec, [], new=True)
    run = client.get_run(started.run_id)
    assert run.info.status == "FINISHED" and LEASE not in run.data.tags


def test_the_leaderboard_of_a_live_sweep_says_it_is_running(tmp_path: Path) -> None:
    from tests.unit.test_each_step import STEPS_SPEC, record_each_step_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    outer = record_each_step_run(client, ["characters", "relationships"])
    args = ("leaderboard", str(STEPS_SPEC), "--tracking-uri", uri)
    assert "running:" not in run_cli(*args).stdout
    client.set_tag(outer, LEASE, lease_tag(age=4))
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(
        r"\nrunning: its driver \(host node-7, pid 4242\) sent a heartbeat \d+ s ago; these are "
        r"its trials so far\n$",
        result.stdout,
    ), result.stdout


def test_a_driver_whose_lease_was_taken_over_stops_as_on_ctrl_c(store: str) -> None:
    """A driver whose heartbeats stopped for a whole lease finds another's token at its next
    renewal: its main thread gets SIGINT, as Ctrl-C (Ray Tune saves its state and stops)."""
    import subprocess
    import sys

    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("leased")).info.run_id
    driver = (
        "import sys, time\n"
        "from ftray.sweep.lease import Lease\n"
        f"lease, tags = Lease.for_new_run({store!r})\n"
        f"lease.start({run_id!r})\n"
        "try:\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', lease.lost.token, flush=True)\n"
        "    sys.exit(0)\n"
        "sys.exit(3)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", driver],
        env={**os.environ, "FTRAY_LEASE_SECONDS": "3"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 40
    while LEASE not in client.get_run(run_id).data.tags:  # the driver's first renewal
        assert time.monotonic() < deadline and child.poll() is None, child.stderr.read()
        time.sleep(0.1)
    client.set_tag(run_id, LEASE, lease_tag(age=0, token="taker"))
    out, err = child.communicate(timeout=50)
    assert child.returncode == 0 and out.strip() == "interrupted taker", err[-2000:]
    assert "was taken over by host node-7, pid 4242" in err
