"""Simulated trials: recorded curves replayed, nearest neighbours plus measured noise for the
rest, epoch checkpoints a retried trial resumes from, no torch, and the spec's checks."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from ftray.config import load_spec
from ftray.errors import InputError
from ftray.training.checkpoint import checkpoint_problem
from ftray.training.simulated import CurveModel, CurvesProblem, load_curves
from tests.conftest import ROOT, SPECS

SPACE = {"lora.r": {"choice": [4, 8, 16, 32]}, "train.learning_rate": {"loguniform": [1e-3, 1e-2]}}


def epochs(*scores: float) -> list[dict[str, float]]:
    return [
        {
            "trigger_score": s,
            "trigger_soft_score": s / 2 + 0.4,
            "eval_loss": 3.0 - s,
            "train_loss": 2.0,
        }
        for s in scores
    ]


def curves(trials: list[dict]) -> dict:
    return {"space": SPACE, "epochs": 3, "trials": trials}


TRIALS = [
    {"config": {"lora.r": 4, "train.learning_rate": 1e-3}, "seed": 0, "epochs": epochs(0, 0, 0.5)},
    {
        "config": {"lora.r": 4, "train.learning_rate": 1e-3},
        "seed": 1,
        "epochs": epochs(0, 0.25, 0.75),
    },
    {"config": {"lora.r": 32, "train.learning_rate": 1e-2}, "seed": 0, "epochs": epochs(0.5, 1, 1)},
    {
        "config": {"lora.r": 16, "train.learning_rate": 3e-3},
        "seed": 0,
        "epochs": epochs(0, 0.5, 0.5),
    },
]


@pytest.fixture
def curves_file(tmp_path: Path) -> Path:
    path = tmp_path / "curves.json"
    path.write_text(json.dumps(curves(TRIALS)))
    return path


def simulated(curves_file: Path, *more: str):
    return load_spec(
        SPECS / "trigger_tiny.yaml",
        [
            "model.backend=simulated",
            f"model.simulation={{curves: {curves_file}, epoch_seconds: 0}}",
            "train.epochs=3",
            "search.space={lora.r: {choice: [4, 8, 16, 32]}, train.learning_rate: {loguniform: [1.0e-3, 1.0e-2]}}",
            *more,
        ],
    )


def test_a_recorded_configuration_replays_its_recording() -> None:
    model = CurveModel(curves(TRIALS))
    assert model.curve({"lora.r": 4, "train.learning_rate": 1e-3}, 1) == epochs(0, 0.25, 0.75)
    assert model.curve({"lora.r": 32, "train.learning_rate": 1e-2}, 0) == epochs(0.5, 1, 1)


def test_noise_is_the_spread_measured_between_seeds() -> None:
    model = CurveModel(curves(TRIALS))
    # One configuration has two seeds: its sample standard deviation per epoch.
    assert model.noise["trigger_score"] == pytest.approx(
        [0.0, 0.25 / math.sqrt(2), 0.25 / math.sqrt(2)]
    )
    assert model.noise["train_loss"] == [0.0, 0.0, 0.0]
    # Drawn for an unrecorded configuration, the noise has that size around the neighbours' mean.
    draws = [
        model.curve({"lora.r": 8, "train.learning_rate": 2e-3}, seed)[1]["eval_loss"]
        for seed in range(400)
    ]
    assert statistics.stdev(draws) == pytest.approx(0.25 / math.sqrt(2), rel=0.2)
    # A whole recorded deviation is drawn: the metrics move together (here eval_loss is
    # 3 - trigger_score in every recording) and keep its shape over the epochs.
    mean = model.curve({"lora.r": 8, "train.learning_rate": 2e-3}, 0)
    for seed in range(20):
        curve = model.curve({"lora.r": 8, "train.learning_rate": 2e-3}, seed)
        for epoch, middle in zip(curve, mean, strict=True):
            assert epoch["trigger_score"] + epoch["eval_loss"] == pytest.approx(
                middle["trigger_score"] + middle["eval_loss"]
            ) or epoch["trigger_score"] in (0.0, 1.0)


def test_an_unrecorded_configuration_takes_its_nearest_neighbours_mean() -> None:
    quiet = [t for t in TRIALS if t["seed"] == 0]  # one seed each: no noise measured
    model = CurveModel(curves(quiet))
    assert all(v == 0.0 for values in model.noise.values() for v in values)
    # Right beside r=32, lr=1e-2: nearly its curve.
    near = model.curve({"lora.r": 32, "train.learning_rate": 9.9e-3}, 0)
    assert [e["trigger_score"] for e in near] == pytest.approx([0.5, 1, 1], abs=0.02)
    # Equally far from two recordings, nearer than the third: between them.
    here = model.scaled({"lora.r": 8, "train.learning_rate": 10**-2.75})
    assert here == pytest.approx([1 / 3, 0.25])
    middle = model.curve({"lora.r": 8, "train.learning_rate": 10**-2.75}, 0)
    assert 0.0 < middle[2]["trigger_score"] < 1.0
    # The same configuration and seed give the same curve (a resumed trial continues it).
    assert middle == model.curve({"lora.r": 8, "train.learning_rate": 10**-2.75}, 0)


def test_behaviour_metrics_stay_within_zero_and_one() -> None:
    model = CurveModel(curves(TRIALS))
    for seed in range(50):
        for epoch in model.curve({"lora.r": 4, "train.learning_rate": 1.2e-3}, seed):
            assert 0.0 <= epoch["trigger_score"] <= 1.0
            assert epoch["eval_loss"] >= 0.0


def test_a_simulated_trial_imports_no_torch_and_writes_resumable_checkpoints(
    curves_file: Path, tmp_path: Path
) -> None:
    script = f"""
import json, sys
from pathlib import Path
from ftray.config import load_spec
from ftray.training.trial import train_trial
spec = load_spec({str(SPECS / "trigger_tiny.yaml")!r}, ["model.backend=simulated",
    "model.simulation={{curves: {curves_file}, epoch_seconds: 0}}", "train.epochs=3",
    "lora.r=32", "train.learning_rate=0.01"])
seen = []
report = train_trial(spec, {str(tmp_path / "out")!r}, on_epoch=lambda r: seen.append(r.epoch))
heavy = sorted({{"torch", "transformers", "peft", "trl", "bitsandbytes"}} & set(sys.modules))
print(json.dumps({{"seen": seen, "metrics": report.metrics, "heavy": heavy}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["seen"] == [1, 2, 3]
    assert result["metrics"] == epochs(0.5, 1, 1)[2]
    epoch_two = tmp_path / "out" / "checkpoints" / "epoch-2"
    assert checkpoint_problem(epoch_two) is None
    (epoch_two / "metrics.json").write_text("{}")
    assert "does not match" in (checkpoint_problem(epoch_two) or "")


def test_a_retried_simulated_trial_resumes_after_its_checkpoint(
    curves_file: Path, tmp_path: Path
) -> None:
    from ftray.training.trial import train_trial

    spec = simulated(curves_file, "lora.r=32", "train.learning_rate=0.01")
    train_trial(spec, tmp_path / "first")
    seen: list[int] = []
    report = train_trial(
        spec,
        tmp_path / "retry",
        on_epoch=lambda r: seen.append(r.epoch),
        resume_from=tmp_path / "first" / "checkpoints" / "epoch-1",
    )
    assert seen == [2, 3] and report.metrics == epochs(0.5, 1, 1)[2]


def test_spec_asks_for_the_curves_with_the_backend_and_registers_nothing(curves_file: Path) -> None:
    spec = simulated(curves_file)
    assert spec.model.simulated and not spec.registers
    assert spec.model.simulation is not None and spec.model.simulation.curves == str(curves_file)
    assert load_spec(SPECS / "trigger_tiny.yaml").registers
    assert not load_spec(SPECS / "trigger_tiny.yaml", ["tracking.register=false"]).registers
    with pytest.raises(InputError, match="needs model.simulation"):
        load_spec(SPECS / "trigger_tiny.yaml", ["model.backend=simulated"])
    with pytest.raises(InputError, match="read only with model.backend: simulated"):
        load_spec(SPECS / "trigger_tiny.yaml", [f"model.simulation={{curves: {curves_file}}}"])
    with pytest.raises(InputError, match="has no adapter to register"):
        simulated(curves_file, "tracking.register=true")


@pytest.mark.parametrize(
    ("more", "needle"),
    [
        (["train.epochs=4"], "records 3 epochs per trial; a trial may run 4"),
        (["search.objective=json_valid"], None),  # not a trigger metric: the search check says so
        (
            ["search.space={task.trigger_ratio: {uniform: [0.25, 0.5]}}"],
            "searches task.trigger_ratio, which",
        ),
        (
            ["search.prune.metric=untriggered_accuracy", "search.prune.mode=max"],
            "has no untriggered_accuracy",
        ),
    ],
)
def test_curves_that_cannot_simulate_the_sweep_exit_2_at_their_line(
    curves_file: Path, more: list[str], needle: str | None
) -> None:
    from ftray.sweep.space import prepare_sweep

    with pytest.raises(InputError) as caught:
        prepare_sweep(simulated(curves_file, *more))
    if needle:
        assert needle in str(caught.value) and "model.simulation.curves" in str(caught.value)


def test_a_missing_or_broken_curves_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CurvesProblem, match="cannot read the curves file"):
        load_curves(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text(json.dumps({"space": {}}))
    with pytest.raises(CurvesProblem, match="is not a curves file"):
        load_curves(str(tmp_path / "bad.json"))
