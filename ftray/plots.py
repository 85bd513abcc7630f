"""Plots of a sweep a person would rather look at than a table: optimisation history,
parameter importances, parallel coordinates. Built with Optuna's matplotlib backend."""

from __future__ import annotations

import math
from typing import Any

from ftray.spec import Spec


def study_from_outcomes(spec: Spec, outcomes: list[Any]) -> Any:
    """An in-memory Optuna study holding the sweep's trials (completed, pruned, failed)."""
    import optuna

    from ftray.tuner import optuna_space

    assert spec.search is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if spec.search.mode == "max" else "minimize")
    distributions = optuna_space(spec)
    for outcome in outcomes:
        params = {k: v for k, v in outcome.config.items() if k in distributions}
        if set(params) != set(distributions):
            continue
        if outcome.status == "completed" and not math.isnan(outcome.value):
            state, value = optuna.trial.TrialState.COMPLETE, outcome.value
        elif outcome.status == "pruned":
            state, value = optuna.trial.TrialState.PRUNED, None
        else:
            state, value = optuna.trial.TrialState.FAIL, None
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, value=value, state=state
            )
        )
    return study


def sweep_figures(spec: Spec, outcomes: list[Any]) -> list[tuple[str, Any]]:
    """(name, matplotlib figure) for every plot the sweep's trials support."""
    import warnings

    import matplotlib
    import optuna

    matplotlib.use("Agg")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    from optuna.visualization import matplotlib as views

    study = study_from_outcomes(spec, outcomes)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    plots: list[tuple[str, Any]] = []
    makers = [("optimization_history", views.plot_optimization_history, 1)]
    if spec.search and len(spec.search.space) >= 1:
        makers += [("parallel_coordinates", views.plot_parallel_coordinate, 2)]
    if spec.search and len(spec.search.space) >= 2:
        makers += [("param_importances", views.plot_param_importances, 3)]
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
