"""A trial resumed from an epoch checkpoint continues the training it interrupted: the
optimizer's moments, the schedule and the random generators come back, so the resumed
epoch is the one an uninterrupted run trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftray.config import load_spec
from ftray.training.checkpoint import MANIFEST, checkpoint_problem
from ftray.training.trial import train_trial
from tests.conftest import SPECS

pytestmark = pytest.mark.slow


class Lost(Exception):
    """The worker dies after an epoch."""


def _epochs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]


def test_resume_trains_the_remaining_epochs_as_an_uninterrupted_run(tmp_path: Path) -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml", ["train.epochs=3"])
    whole = train_trial(spec, tmp_path / "whole")

    def die_after_two(report) -> bool:
        if report.epoch == 2:
            raise Lost
        return False

    with pytest.raises(Lost):
        train_trial(spec, tmp_path / "first", on_epoch=die_after_two)
    checkpoint = tmp_path / "first" / "checkpoints" / "epoch-2"
    assert checkpoint_problem(checkpoint) is None
    heard = []
    resumed = train_trial(
        spec, tmp_path / "retry", resume_from=checkpoint, on_epoch=lambda r: heard.append(r.epoch)
    )

    assert heard == [3]
    assert [e["epoch"] for e in _epochs(tmp_path / "retry")] == [3]
    expected = _epochs(tmp_path / "whole")[-1]
    got = _epochs(tmp_path / "retry")[-1]
    # Measured: resumed, epoch 3's losses are within 1.2e-4 of the uninterrupted run's
    # (float rounding); resumed with the adapter alone (Adam's moments at zero, the schedule
    # back at its start) they are 2% (train) and 0.5% (eval) away.
    assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-3)
    assert got["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-3)
    assert resumed.epoch == whole.epoch == 3
    # The final adapter is the adapter alone: the resume state stays in the checkpoints.
    assert (tmp_path / "retry" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "retry" / "adapter" / MANIFEST).exists()
    assert not list((tmp_path / "retry" / "adapter").glob("training_state*"))


def test_resume_after_the_last_epoch_trains_nothing(tmp_path: Path) -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml", ["train.epochs=1"])
    first = train_trial(spec, tmp_path / "first")
    heard = []
    again = train_trial(
        spec,
        tmp_path / "retry",
        resume_from=tmp_path / "first" / "checkpoints" / "epoch-1",
        on_epoch=lambda r: heard.append(r.epoch),
    )
    assert heard == []
    assert again.epoch == 1
    assert again.metrics == pytest.approx(first.metrics)
