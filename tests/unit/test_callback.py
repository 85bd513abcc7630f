"""A trial whose node went away is retried without spending its own retries: the failure is
recorded, and Tune's count of it is taken back (up to NODE_LOSS_RETRIES per trial)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient
from ray.exceptions import ActorUnavailableError

from ftray.config import load_spec
from ftray.sweep.callback import RecordTrials, lost_its_node
from ftray.tracking.recorder import NODE_LOSS_RETRIES, SweepRecorder
from tests.conftest import SPECS, sqlite_store

UNREACHABLE = str(
    ActorUnavailableError(
        "The actor is temporarily unavailable: RpcError: RPC error: recvmsg:Connection reset "
        "by peer rpc_code: 14",
        None,
    )
)


class FakeTrial(SimpleNamespace):
    """What the callback reads of a Tune trial: its id, config, error file and counts."""

    def fail(self, error: str) -> None:
        with Path(self.error_file).open("a") as handle:
            handle.write(f"Failure # {self.run_metadata.num_failures + 1} (occurred at now)\n")
            handle.write(error + "\n")
        self.run_metadata.num_failures += 1  # as Tune's Trial.handle_error counts it


@pytest.fixture
def callback(tmp_path: Path) -> RecordTrials:
    uri = sqlite_store(tmp_path)
    client = MlflowClient(uri)
    experiment = client.create_experiment("trigger-tiny")
    parent = client.create_run(experiment).info.run_id
    SweepRecorder(uri, experiment, parent, load_spec(SPECS / "trigger_tiny.yaml"))
    yield RecordTrials(parent)
    SweepRecorder.for_sweep(parent).release()


def fake_trial(tmp_path: Path) -> FakeTrial:
    metadata = SimpleNamespace(num_failures=0, invalidate_cache=lambda: None)
    return FakeTrial(
        trial_id="t1",
        config={"lora.r": 8},
        error_file=str(tmp_path / "error.txt"),
        run_metadata=metadata,
    )


def test_losing_its_node_costs_a_trial_none_of_its_retries(
    callback: RecordTrials, tmp_path: Path
) -> None:
    trial = fake_trial(tmp_path)
    trial.fail(UNREACHABLE)
    assert lost_its_node(trial)
    callback.on_trial_recover(0, [], trial)
    assert trial.run_metadata.num_failures == 0
    record = callback.recorder.records["t1"]
    assert (record.retries, record.node_losses) == (1, 1)
    callback.recorder.flush()
    run = callback.recorder.client.get_run(record.run_id)
    assert run.data.tags["ftray.retries"] == "1"


def test_a_trials_own_error_counts(callback: RecordTrials, tmp_path: Path) -> None:
    trial = fake_trial(tmp_path)
    trial.fail("ValueError: the trial's own code raised")
    assert not lost_its_node(trial)
    callback.on_trial_recover(0, [], trial)
    assert trial.run_metadata.num_failures == 1
    # A worker that died (out of memory, say) is the trial's too: only unreachable counts.
    trial.fail("The actor died unexpectedly before finishing this task.")
    callback.on_trial_recover(0, [], trial)
    assert trial.run_metadata.num_failures == 2


def test_a_node_declared_dead_is_a_node_loss_too(callback: RecordTrials, tmp_path: Path) -> None:
    trial = fake_trial(tmp_path)
    # Ray's ActorDiedError once the cluster has declared the worker's node dead, as Ray
    # 2.60 words it.
    trial.fail(
        "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n"
        "\tclass_name: ImplicitFunc\n"
        "The actor died because its node has died. Node Id: 5f2c"
    )
    assert lost_its_node(trial)
    callback.on_trial_recover(0, [], trial)
    assert trial.run_metadata.num_failures == 0


def test_only_the_latest_failure_is_read(callback: RecordTrials, tmp_path: Path) -> None:
    trial = fake_trial(tmp_path)
    trial.fail(UNREACHABLE)
    callback.on_trial_recover(0, [], trial)
    trial.fail("ValueError: the trial's own code raised")
    assert not lost_its_node(trial)
    callback.on_trial_recover(0, [], trial)
    assert trial.run_metadata.num_failures == 1


def test_node_losses_stop_being_free_after_the_bound(
    callback: RecordTrials, tmp_path: Path
) -> None:
    trial = fake_trial(tmp_path)
    for _ in range(NODE_LOSS_RETRIES):
        trial.fail(UNREACHABLE)
        callback.on_trial_recover(0, [], trial)
    assert trial.run_metadata.num_failures == 0
    trial.fail(UNREACHABLE)
    callback.on_trial_recover(0, [], trial)
    assert trial.run_metadata.num_failures == 1


def test_no_error_file_counts_the_failure(tmp_path: Path) -> None:
    assert not lost_its_node(SimpleNamespace(error_file=str(tmp_path / "none.txt")))
