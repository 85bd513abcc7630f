"""A NaN or infinite loss fails the trial at once, before the epoch is scored or reported."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftray.config import load_spec
from ftray.training.report import NonFiniteLoss
from tests.conftest import SPECS


@pytest.fixture
def evaluation(tmp_path: Path):
    from ftray.training.callbacks import EpochEvaluation

    spec = load_spec(SPECS / "trigger_tiny.yaml", ["train.learning_rate=10000.0"])
    reported: list = []
    # No task or backend: a diverged epoch must fail before either is used.
    return EpochEvaluation(spec, None, None, tmp_path, reported.append), reported


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_a_non_finite_training_step_raises(evaluation, loss: float) -> None:
    callback, reported = evaluation
    state = SimpleNamespace(global_step=3, epoch=0.4)
    callback.on_log(None, state, None, logs={"loss": 2.5})
    with pytest.raises(NonFiniteLoss, match=r"train_loss is .* at step 3.*learning_rate=10000"):
        callback.on_log(None, state, None, logs={"loss": loss})
    assert callback.losses == [2.5] and not reported


def test_a_non_finite_eval_loss_raises_before_scoring(evaluation) -> None:
    callback, reported = evaluation
    state = SimpleNamespace(global_step=10, epoch=1.0)
    with pytest.raises(NonFiniteLoss, match="eval_loss is nan after epoch 1"):
        callback.on_evaluate(None, state, None, metrics={"eval_loss": math.nan})
    assert not reported and not callback.reports


def test_the_trainer_logs_non_finite_losses_as_they_are(tmp_path: Path) -> None:
    from ftray.training.trial import sft_config

    spec = load_spec(SPECS / "trigger_tiny.yaml")
    assert sft_config(spec, tmp_path).logging_nan_inf_filter is False
