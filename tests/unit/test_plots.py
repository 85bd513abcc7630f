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


def test_histories_come_from_what_the_driver_logged_else_from_mlflow() -> None:
    """A trial this driver saw from its first epoch costs no request to the store; one a
    resumed sweep saw only from a later epoch is read back from MLflow."""
    from types import SimpleNamespace

    from ftray.sweep.runner import metric_histories
    from ftray.tracking.recorder import TrialRecord

    whole = TrialRecord("run-whole", 3)
    for epoch in (1, 2, 3, 2):  # epoch 2 retried from a checkpoint: its last report counts
        whole.history[epoch] = {"trigger_score": epoch / 10 + (0.5 if epoch == 2 else 0)}
    late = TrialRecord("run-late", 3)
    late.history[3] = {"trigger_score": 0.9}
    asked: list[tuple[str, str]] = []

    class Store:
        def get_metric_history(self, run_id: str, metric: str) -> list:
            asked.append((run_id, metric))
            return [SimpleNamespace(step=s, value=s / 10) for s in (3, 1, 2)]

    outcomes, _ = trials(2)
    outcomes[0].trial_id, outcomes[0].run_id = "whole", "run-whole"
    outcomes[1].trial_id, outcomes[1].run_id = "late", "run-late"
    recorder = SimpleNamespace(records={"whole": whole, "late": late})
    histories = metric_histories(Store(), outcomes, ["trigger_score"], recorder)
    assert histories["whole"]["trigger_score"] == [(1, 0.1), (2, 0.7), (3, 0.3)]
    assert histories["late"]["trigger_score"] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert asked == [("run-late", "trigger_score")]
