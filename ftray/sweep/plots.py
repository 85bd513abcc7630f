"""Plots of a sweep a person would rather look at than a table: optimisation history,
parameter importances, parallel coordinates and, with several objectives, the Pareto front.
Built with Optuna's matplotlib backend from the sweep's outcomes."""

from __future__ import annotations

import math
from typing import Any

from ftray.config.spec import Spec
from ftray.sweep.objectives import TrialOutcome
from ftray.sweep.space import optuna_space
from ftray.tracking.tags import TrialStatus


def study_from_outcomes(spec: Spec, outcomes: list[TrialOutcome]) -> Any:
    """An in-memory Optuna study holding the sweep's trials (completed, pruned, failed)."""
    import optuna

    assert spec.search is not None
    goals = spec.search.goals
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=["maximize" if g.mode == "max" else "minimize" for g in goals]
    )
    distributions = optuna_space(spec)
    for outcome in outcomes:
        params = {k: v for k, v in outcome.config.items() if k in distributions}
        if set(params) != set(distributions):
            continue
        values = [outcome.value(g.metric) for g in goals]
        if outcome.status is TrialStatus.COMPLETED and not any(map(math.isnan, values)):
            state = optuna.trial.TrialState.COMPLETE
        elif outcome.status is TrialStatus.PRUNED:
            state, values = optuna.trial.TrialState.PRUNED, None
        else:
            state, values = optuna.trial.TrialState.FAIL, None
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, values=values, state=state
            )
        )
    return study


def sweep_figures(spec: Spec, outcomes: list[TrialOutcome]) -> list[tuple[str, Any]]:
    """(name, matplotlib figure) for every plot the sweep's trials support."""
    import warnings

    import matplotlib
    import optuna

    matplotlib.use("Agg")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    from optuna.visualization import matplotlib as views

    assert spec.search is not None
    goals = spec.search.goals
    study = study_from_outcomes(spec, outcomes)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    first = {}
    if len(goals) > 1:
        first = {"target": lambda t: t.values[0], "target_name": goals[0].metric}
    makers: list[tuple[str, Any, int]] = [
        ("optimization_history", lambda s: views.plot_optimization_history(s, **first), 1)
    ]
    if len(spec.search.space) >= 1:
        makers.append(
            ("parallel_coordinates", lambda s: views.plot_parallel_coordinate(s, **first), 2)
        )
    if len(spec.search.space) >= 2:
        makers.append(("param_importances", lambda s: views.plot_param_importances(s, **first), 3))
    if len(goals) in (2, 3):
        names = [g.metric for g in goals]
        makers.append(("pareto_front", lambda s: views.plot_pareto_front(s, target_names=names), 1))
    plots: list[tuple[str, Any]] = []
    for name, maker, needed in makers:
        if len(complete) < needed:
            continue
        try:
            axes = maker(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue  # e.g. importances when every completed trial scored the same
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(9, 5.5)
        figure.tight_layout()
        plots.append((name, figure))
    return plots
