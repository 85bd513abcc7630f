"""`search.prune`: what ASHA stops trials on (validated with file:line), its rungs, and a
trial it stops told to Optuna as PRUNED; the leaderboard and plot say where it stopped."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from ftray.config import load_spec
from ftray.sweep.optuna_search import PruneAwareOptunaSearch, stopped_early
from ftray.sweep.plots import plotted_metrics, stop_label
from ftray.sweep.searcher import build_scheduler
from ftray.sweep.space import asha_rungs, search_warnings
from ftray.tracking.leaderboard import describe_pruning, stopped_cell
from ftray.tracking.tags import STOPPED_AT, STOPPED_ON, TrialStatus
from tests.conftest import SPECS
from tests.unit.test_bad_input import GOOD_SPEC, assert_input_error, write_case

SEARCH = """\
search:
  objective: trigger_score
  mode: max
  prune: {PRUNE}
  space:
    lora.r: {choice: [4, 8]}
"""


def prune_case(tmp_path: Path, prune: str, epochs: int = 4) -> Path:
    spec = GOOD_SPEC.replace("epochs: 1", f"epochs: {epochs}") + SEARCH.replace("{PRUNE}", prune)
    return write_case(tmp_path, spec)


def prune_line(spec: Path) -> int:
    return next(i for i, line in enumerate(spec.read_text().splitlines(), 1) if "prune:" in line)


@pytest.mark.parametrize(
    ("prune", "needles"),
    [
        (
            "{metric: accuracy, mode: max}",
            ("prune.metric 'accuracy' is not a metric of task 'trigger'", "eval_loss"),
        ),
        ("{metric: eval_loss, mode: minimise}", ("search.prune.mode", "'max' or 'min'")),
        ("{grace_period: 5}", ("grace_period 5 is above the most epochs a trial runs (4",)),
        ("{grace_period: 3, max_t: 2}", ("grace_period 3 is above search.prune.max_t 2",)),
        ("{max_t: 9}", ("max_t 9 is above the most epochs a trial runs (4",)),
        ("{metric: trigger_score}", ("needs search.prune.mode: max or min",)),
        ("{mode: max}", ("needs search.prune.metric",)),
        ("{reduction_factor: 1}", ("search.prune.reduction_factor", "greater than 1")),
    ],
)
def test_bad_prune_section_exits_2_with_its_line(
    tmp_path: Path, prune: str, needles: tuple[str, ...]
) -> None:
    spec = prune_case(tmp_path, prune)
    assert_input_error(spec, "spec.yaml", prune_line(spec), *needles)


def test_grace_period_is_checked_against_searched_epochs(tmp_path: Path) -> None:
    spec = prune_case(tmp_path, "{grace_period: 6}").read_text()
    spec = spec.replace("lora.r: {choice: [4, 8]}", "train.epochs: {int: [2, 5]}")
    path = write_case(tmp_path, spec)
    assert_input_error(path, "spec.yaml", prune_line(path), "(5, search.space train.epochs)")


@pytest.mark.parametrize(
    ("spec_file", "overrides", "metric", "mode"),
    [
        # A behaviour metric with a smooth counterpart: ASHA stops on that.
        ("trigger_tiny.yaml", [], "trigger_soft_score", "max"),
        # One without (the pipeline task has none): on the smooth loss.
        ("pipeline_tiny.yaml", [], "eval_loss", "min"),
        (
            "trigger_tiny.yaml",
            ["search.objective=train_loss", "search.mode=min"],
            "train_loss",
            "min",
        ),
        (
            "trigger_tiny.yaml",
            ["search.objective=eval_loss", "search.mode=min"],
            "eval_loss",
            "min",
        ),
        (
            "trigger_tiny.yaml",
            ["search.prune.metric=trigger_score", "search.prune.mode=max"],
            "trigger_score",
            "max",
        ),
        ("trigger_tiny.yaml", ["search.prune.metric=eval_loss"], "eval_loss", "min"),
        ("trigger_tiny.yaml", ["search.prune.metric=train_loss"], "train_loss", "min"),
    ],
)
def test_what_asha_stops_on(spec_file: str, overrides: list[str], metric: str, mode: str) -> None:
    spec = load_spec(SPECS / spec_file, overrides)
    assert (spec.stopping.metric, spec.stopping.mode) == (metric, mode)
    asha = build_scheduler(spec)
    assert (asha._metric, asha._mode) == (metric, mode)
    # The objective still decides what is registered.
    assert spec.search.selection.metric == spec.search.primary.metric


def test_scheduler_takes_the_rungs_from_prune() -> None:
    spec = load_spec(
        SPECS / "trigger_tiny.yaml",
        [
            "search.prune.grace_period=2",
            "search.prune.reduction_factor=3",
            "search.prune.max_t=7",
        ],
    )
    asha = build_scheduler(spec)
    assert asha._max_t == 7
    assert asha_rungs(spec) == [2, 6]
    assert [m for m, _ in asha._brackets[0]._rungs if m < 7] == [6, 2]


@pytest.mark.parametrize(
    ("grace", "factor", "epochs"), [(1, 2, 8), (1, 2, 3), (2, 2, 9), (1, 3, 10)]
)
def test_rungs_are_where_rays_asha_compares(grace: int, factor: int, epochs: int) -> None:
    spec = load_spec(
        SPECS / "trigger_tiny.yaml",
        [
            f"train.epochs={epochs}",
            f"search.prune.grace_period={grace}",
            f"search.prune.reduction_factor={factor}",
        ],
    )
    ray_rungs = sorted(m for m, _ in build_scheduler(spec)._brackets[0]._rungs if m < epochs)
    assert asha_rungs(spec) == ray_rungs


def test_prune_warnings() -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml", ["search.scheduler=fifo"])
    assert search_warnings(spec) == []
    spec = load_spec(
        SPECS / "trigger_tiny.yaml", ["search.scheduler=fifo", "search.prune.grace_period=2"]
    )
    [warning] = search_warnings(spec)
    assert "no effect with scheduler: fifo" in str(warning)
    spec = load_spec(SPECS / "trigger_tiny.yaml", ["search.prune.max_t=4"])
    [warning] = search_warnings(spec)
    assert "stops every trial at epoch 4 at the latest" in str(warning)


def optuna_search(metric: str | list[str], mode: str | list[str]) -> PruneAwareOptunaSearch:
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    return PruneAwareOptunaSearch(
        space=space, metric=metric, mode=mode, sampler=optuna.samplers.RandomSampler(seed=0)
    )


def result(epoch: int, planned: int, **metrics: float) -> dict:
    return {"epoch": epoch, "epochs_planned": planned, "training_iteration": epoch, **metrics}


def test_a_trial_stopped_early_is_pruned_in_the_study() -> None:
    search = optuna_search("trigger_score", "max")
    for trial_id in ("done", "stopped", "broken"):
        search.suggest(trial_id)
    search.on_trial_result("done", result(1, 2, trigger_score=0.0))
    search.on_trial_complete("done", result(2, 2, trigger_score=0.75))
    # ASHA stopped it on its first result: Tune never passed that result to the searcher.
    search.on_trial_complete("stopped", result(1, 2, trigger_score=0.0))
    search.on_trial_complete("broken", result(1, 2, trigger_score=0.5), error=True)
    states = {t.state.name: t for t in search._ot_study.trials}
    assert sorted(states) == ["COMPLETE", "FAIL", "PRUNED"]
    assert states["COMPLETE"].value == 0.75
    # As with Optuna's own pruning: the value it was stopped at is its last intermediate one.
    assert states["PRUNED"].intermediate_values == {1: 0.0}


def test_several_objectives_pruned_too() -> None:
    search = optuna_search(["trigger_score", "false_trigger_rate"], ["max", "min"])
    search.suggest("a")
    search.suggest("b")
    search.on_trial_complete("a", result(3, 3, trigger_score=0.5, false_trigger_rate=0.1))
    search.on_trial_complete("b", result(1, 3, trigger_score=0.0, false_trigger_rate=0.0))
    assert [t.state.name for t in search._ot_study.trials] == ["COMPLETE", "PRUNED"]
    assert search._ot_study.trials[0].values == [0.5, 0.1]


def test_stopped_early() -> None:
    assert stopped_early(result(1, 3))
    assert not stopped_early(result(3, 3))
    assert not stopped_early({"epoch": 1})  # no plan known: taken as it ends


def fake_run(tags: dict, metrics: dict) -> SimpleNamespace:
    return SimpleNamespace(data=SimpleNamespace(tags=tags, metrics=metrics))


def test_leaderboard_says_where_asha_stopped_a_trial() -> None:
    prune = {"metric": "eval_loss", "mode": "min", "rungs": [1.0, 2.0, 4.0]}
    assert describe_pruning(prune) == "ASHA stops on min eval_loss at rungs (epochs) 1, 2, 4"
    run = fake_run({STOPPED_ON: "eval_loss", STOPPED_AT: "2"}, {"eval_loss": 2.3456, "epoch": 2})
    assert stopped_cell(run, prune) == "eval_loss 2.346 @ rung 2 (epoch 2)"
    assert stopped_cell(fake_run({}, {"eval_loss": 1.0}), prune) == ""


def outcome(status: TrialStatus, epochs: int) -> SimpleNamespace:
    return SimpleNamespace(status=status, epochs=epochs)


def test_plot_panels_and_labels_name_the_stopping_metric_and_rung() -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml")
    assert [g.metric for g in plotted_metrics(spec)] == ["trigger_score", "trigger_soft_score"]
    # 8 epochs: the default grace period (half of them) puts ASHA's one rung (rung 1) at epoch 4.
    assert (
        stop_label(spec, outcome(TrialStatus.PRUNED, 4)) == "pruned on trigger_soft_score @ rung 1"
    )
    assert (
        stop_label(spec, outcome(TrialStatus.PRUNED, 2)) == "pruned on trigger_soft_score @ epoch 2"
    )
    on_loss = load_spec(SPECS / "trigger_tiny.yaml", ["search.prune.metric=eval_loss"])
    assert [g.metric for g in plotted_metrics(on_loss)] == ["trigger_score", "eval_loss"]
    assert stop_label(on_loss, outcome(TrialStatus.PRUNED, 4)) == "pruned on eval_loss @ rung 1"
    assert stop_label(spec, outcome(TrialStatus.COMPLETED, 8)) == "completed"
    fifo = load_spec(SPECS / "trigger_tiny.yaml", ["search.scheduler=fifo"])
    assert [g.metric for g in plotted_metrics(fifo)] == ["trigger_score"]
