"""On a CUDA machine with `ftray[gpu]` installed: one real Unsloth trial of the tiny spec.

Skipped elsewhere (this project's CI has no GPU), so the Unsloth path stays listed as
unverified in docs/status.md until this has run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ftray.config import load_spec
from tests.behaviour import assert_learned_trigger
from tests.conftest import SPECS

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        importlib.util.find_spec("unsloth") is None, reason="needs pip install 'ftray[gpu]'"
    ),
]


def test_unsloth_trial_learns_the_trigger(tmp_path: Path) -> None:
    """The spec's shipped epochs on Unsloth must learn the trigger as well as the CPU trial
    does (tests/integration/test_train.py, the same assert_learned_trigger)."""
    from ftray.training.trial import train_trial

    spec = load_spec(SPECS / "trigger_tiny.yaml", ["model.backend=unsloth"])
    report = train_trial(spec, tmp_path)
    assert report.epoch == spec.train.epochs  # the shipped 8, as the CPU test trains
    assert_learned_trigger(report.metrics)
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
