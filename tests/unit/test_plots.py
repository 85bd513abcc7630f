"""The per-epoch plot stays readable with many trials: the best few in colour with a legend
entry each, the rest faint and counted in one entry."""

from __future__ import annotations

import matplotlib

from ftray.config import load_spec
from ftray.sweep.objectives import TrialOutcome
from ftray.sweep.plots import HIGHLIGHTED, best_first, objective_per_epoch
from ftray.tracking.tags import TrialStatus
from tests.conftest import SPECS

matplotlib.use("Agg")


def trials(count: int) -> tuple[list[TrialOutcome], dict]:
    """`count` trials, trial k ending at k / count (the later, the better), every third one
    stopped at epoch 2."""
    outcomes, histories = [], {}
    for k in range(count):
        final = k / count
        pruned = k % 3 == 0
        epochs = 2 if pruned else 4
        curve = [(e, final * e / 4) for e in range(1, epochs + 1)]
        outcomes.append(
            TrialOutcome(
                trial_id=f"t{k:04d}",
                run_id=f"run-{k}",
                status=TrialStatus.PRUNED if pruned else TrialStatus.COMPLETED,
                metrics={
                    "trigger_score": curve[-1][1],
                    "timestamp": 1000.0 + k,
                    "time_total_s": 1.0,
                },
                epochs=epochs,
                config={},
            )
        )
        histories[f"t{k:04d}"] = {"trigger_score": curve, "trigger_soft_score": curve}
    return outcomes, histories


def legend_texts(figure) -> list[str]:
    return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]


def test_many_trials_show_the_best_in_colour_and_count_the_rest() -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml", ["train.epochs=4"])
    outcomes, histories = trials(200)
    figure = objective_per_epoch(spec, outcomes, histories)
    texts = legend_texts(figure)
    assert len(texts) == HIGHLIGHTED + 1 and texts[-1] == f"{200 - HIGHLIGHTED} other trials"
    best = {o.trial_id for o in best_first(spec, outcomes)[:HIGHLIGHTED]}
    assert {text.split(" ")[0] for text in texts[:-1]} == best
    # The completed trials that end highest (the stopped ones end at half their pace).
    assert best == {
        "t0199",
        "t0197",
        "t0196",
        "t0194",
        "t0193",
        "t0191",
        "t0190",
        "t0188",
        "t0187",
        "t0185",
    }
    assert f"the {HIGHLIGHTED} best in colour" in figure.axes[0].get_title()


def test_a_few_trials_are_all_drawn_and_labelled() -> None:
    spec = load_spec(SPECS / "trigger_tiny.yaml", ["train.epochs=4"])
    outcomes, histories = trials(6)
    figure = objective_per_epoch(spec, outcomes, histories)
    assert len(legend_texts(figure)) == 6
    assert "best in colour" not in figure.axes[0].get_title()
