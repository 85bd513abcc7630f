"""Plots of a sweep a person would rather look at than a table, logged to the parent run:

- `objective_per_epoch`: every trial's objective at every epoch, trials stopped early by
  ASHA drawn dashed and marked where they stopped;
- `optimization_history`: each trial's last value in the order trials started, stopped
  ones included, with the best completed value so far;
- `parallel_coordinates`: every finished trial across the searched parameters and the
  objective;
- `param_importances`: Optuna's importances, when enough trials completed;
- `pareto_front`: with two or three objectives, Optuna's Pareto-front plot.
"""

from __future__ import annotations

import math
from typing import Any

from ftray.config.search import Objective
from ftray.config.spec import Spec
from ftray.log import get_logger
from ftray.sweep.objectives import TrialOutcome
from ftray.sweep.space import asha_rungs, optuna_space
from ftray.tracking.tags import TrialStatus

log = get_logger()
History = dict[str, dict[str, list[tuple[int, float]]]]
MIN_TRIALS_FOR_IMPORTANCES = 4
HIGHLIGHTED = 10
"""How many trials the per-epoch plot draws in colour, with a legend entry each."""
STYLE = {
    TrialStatus.COMPLETED: {"linestyle": "-", "alpha": 0.9},
    TrialStatus.PRUNED: {"linestyle": "--", "alpha": 0.8},
    TrialStatus.FAILED: {"linestyle": ":", "alpha": 0.6},
}


def _started(outcome: TrialOutcome) -> float:
    """When the trial started (Tune's last result timestamp minus its running time)."""
    return outcome.metrics.get("timestamp", math.inf) - outcome.metrics.get("time_total_s", 0.0)


def plotted_metrics(spec: Spec) -> list[Objective]:
    """The per-epoch plot's panels: every objective, then the metric ASHA stops on when it is
    none of them."""
    assert spec.search is not None
    goals = list(spec.search.goals)
    stopping = spec.stopping
    if spec.search.scheduler == "asha" and stopping.metric not in {g.metric for g in goals}:
        goals.append(stopping)
    return goals


def stop_label(spec: Spec, outcome: TrialOutcome) -> str:
    """`pruned on eval_loss @ rung 1` for a trial ASHA stopped; its status otherwise."""
    assert spec.search is not None
    if outcome.status is not TrialStatus.PRUNED or spec.search.scheduler != "asha":
        return str(outcome.status)
    rungs = asha_rungs(spec)
    where = (
        f"rung {rungs.index(outcome.epochs) + 1}"
        if outcome.epochs in rungs
        else f"epoch {outcome.epochs}"
    )
    return f"pruned on {spec.stopping.metric} @ {where}"


def best_first(spec: Spec, outcomes: list[TrialOutcome]) -> list[TrialOutcome]:
    """The trials by their last value of the first objective, best first (no value last)."""
    assert spec.search is not None
    goal = spec.search.primary
    sign = -1.0 if goal.mode == "max" else 1.0

    def key(outcome: TrialOutcome) -> float:
        value = outcome.value(goal.metric)
        return math.inf if math.isnan(value) else sign * value

    return sorted(outcomes, key=key)


def objective_per_epoch(spec: Spec, outcomes: list[TrialOutcome], histories: History) -> Any:
    """One panel per objective, and one for the metric ASHA stops on when it is not an
    objective: a line per trial over epochs; stopped trials dashed, with an x where ASHA
    stopped them, and the legend saying on which metric and at which rung; ASHA's rungs are
    dotted verticals. Of more than `HIGHLIGHTED` trials, the `HIGHLIGHTED` best on the first
    objective are drawn so, and the rest as faint grey lines under them, unlabelled."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    assert spec.search is not None
    panels = plotted_metrics(spec)
    stopping = spec.stopping
    rungs = asha_rungs(spec) if spec.search.scheduler == "asha" else []
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 3.6 * len(panels)), squeeze=False)
    colors = plt.get_cmap("tab10")
    stopped = sum(o.status is TrialStatus.PRUNED for o in outcomes)
    shown = {o.trial_id for o in best_first(spec, outcomes)[:HIGHLIGHTED]}
    faded = len(outcomes) - len(shown)
    for axis, goal in zip(axes[:, 0], panels, strict=True):
        highlighted = 0
        for outcome in sorted(outcomes, key=_started):
            points = histories.get(outcome.trial_id, {}).get(goal.metric, [])
            if not points:
                continue
            epochs, values = zip(*points, strict=True)
            style = STYLE.get(outcome.status, STYLE[TrialStatus.FAILED])
            if outcome.trial_id not in shown:
                axis.plot(epochs, values, color="0.6", linewidth=0.7, alpha=0.35, zorder=1)
                if outcome.status is TrialStatus.PRUNED:
                    axis.plot(epochs[-1], values[-1], "x", color="0.5", markersize=4, zorder=1)
                continue
            axis.plot(
                epochs,
                values,
                marker="o",
                markersize=3,
                color=colors(highlighted % 10),
                label=f"{outcome.trial_id} ({stop_label(spec, outcome)})",
                zorder=3,
                **style,
            )
            highlighted += 1
            if outcome.status is TrialStatus.PRUNED:
                axis.plot(epochs[-1], values[-1], "x", color="black", markersize=9, mew=2, zorder=4)
        for rung in rungs:
            axis.axvline(rung, color="gray", linestyle=":", linewidth=0.8)
        role = "ASHA stops on this" if goal.metric == stopping.metric and rungs else ""
        axis.set_title(role, fontsize=8, loc="right")
        axis.set_xlabel("epoch" + (" (dotted: ASHA's rungs)" if rungs else ""))
        axis.set_ylabel(f"{goal.metric} ({goal.mode})")
        axis.grid(alpha=0.3)
        axis.xaxis.get_major_locator().set_params(integer=True)
    how = f"\nASHA stops on {stopping} at the dotted rungs" if rungs else ""
    best = f"; the {len(shown)} best in colour" if faded else ""
    axes[0, 0].set_title(
        f"{spec.name}: objective per epoch, {len(outcomes)} trials "
        f"({stopped} stopped early, marked x{best}){how}"
    )
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if faded:
        handles.append(Line2D([], [], color="0.6", linewidth=0.7, alpha=0.6))
        labels.append(f"{faded} other trials")
    axes[0, 0].legend(handles, labels, fontsize=7, ncol=2, loc="best")
    return figure


def optimization_history(spec: Spec, outcomes: list[TrialOutcome]) -> Any:
    """Last value of the first objective per trial, in start order; best completed so far."""
    import matplotlib.pyplot as plt

    assert spec.search is not None
    goal = spec.search.primary
    figure, axis = plt.subplots(figsize=(9, 5))
    best: float = math.nan
    best_line: list[tuple[int, float]] = []
    for number, outcome in enumerate(sorted(outcomes, key=_started), start=1):
        value = outcome.value(goal.metric)
        if math.isnan(value):
            continue
        if outcome.status is TrialStatus.COMPLETED:
            axis.plot(number, value, "o", color="tab:blue", markersize=7)
            if goal.better(value, best):
                best = value
        elif outcome.status is TrialStatus.PRUNED:
            axis.plot(number, value, "x", color="tab:orange", markersize=8, mew=2)
            axis.annotate(
                f"stopped @ {outcome.epochs}",
                (number, value),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        if not math.isnan(best):
            best_line.append((number, best))
    if best_line:
        xs, ys = zip(*best_line, strict=True)
        axis.step(xs, ys, where="post", color="tab:red", label="best completed so far")
    axis.plot([], [], "o", color="tab:blue", label="completed")
    axis.plot([], [], "x", color="tab:orange", label="stopped early (last value)")
    axis.set_xlabel("trial (in start order)")
    axis.set_ylabel(f"{goal.metric} ({goal.mode})")
    axis.set_title(f"{spec.name}: optimisation history, {len(outcomes)} trials")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return figure


def _axis_position(values: list[Any], kind: str) -> list[float]:
    """Values of one parameter mapped to [0, 1] (log scale for loguniform, order for choices)."""
    if kind == "choice":
        order = sorted(set(values), key=lambda v: (isinstance(v, str), v))
        return [order.index(v) / max(1, len(order) - 1) for v in values]
    numbers = [math.log(v) if kind == "loguniform" else float(v) for v in values]
    low, high = min(numbers), max(numbers)
    return [0.5 if high == low else (n - low) / (high - low) for n in numbers]


def parallel_coordinates(spec: Spec, outcomes: list[TrialOutcome]) -> Any:
    """A line per finished trial through each searched parameter and the first objective,
    coloured by that objective; trials stopped early dashed."""
    import matplotlib.pyplot as plt

    assert spec.search is not None
    goal = spec.search.primary
    finished = [
        o
        for o in outcomes
        if o.status.finished
        and not math.isnan(o.value(goal.metric))
        and all(p in o.config for p in spec.search.space)
    ]
    names = [*spec.search.space, goal.metric]
    columns = [
        _axis_position([o.config[p] for o in finished], d.kind)
        for p, d in spec.search.space.items()
    ]
    scores = [o.value(goal.metric) for o in finished]
    columns.append(_axis_position(scores, "uniform"))
    figure, axis = plt.subplots(figsize=(9, 5))
    colormap = plt.get_cmap("viridis" if goal.mode == "max" else "viridis_r")
    low, high = min(scores), max(scores)
    for row, outcome in enumerate(finished):
        shade = 0.5 if high == low else (scores[row] - low) / (high - low)
        axis.plot(
            range(len(names)),
            [column[row] for column in columns],
            color=colormap(shade),
            linewidth=2,
            marker="o",
            **{k: v for k, v in STYLE[outcome.status].items() if k == "linestyle"},
        )
    kinds = [d.kind for d in spec.search.space.values()] + ["uniform"]
    raw = [[o.config[p] for o in finished] for p in spec.search.space] + [scores]
    for index, (values, positions, kind) in enumerate(zip(raw, columns, kinds, strict=True)):
        axis.axvline(index, color="gray", linewidth=0.8)
        labelled = dict(zip(positions, values, strict=True))
        if kind != "choice":  # a numeric axis: label its two ends
            labelled = {p: labelled[p] for p in (min(labelled), max(labelled))}
        for position, value in labelled.items():
            text = f"{value:.3g}" if isinstance(value, float) else str(value)
            axis.annotate(
                text,
                (index, position),
                xytext=(7, 0),
                textcoords="offset points",
                fontsize=7,
                va="center",
            )
    axis.set_xticks(range(len(names)), names, fontsize=8)
    axis.xaxis.tick_top()
    axis.set_yticks([])
    axis.set_ylim(-0.05, 1.05)
    axis.set_title(
        f"{spec.name}: {len(finished)} finished trials (dashed: stopped early), colour = {goal}",
        pad=28,
    )
    return figure


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


def param_importances(spec: Spec, study: Any, goal: Objective) -> Any | None:
    """Optuna's parameter importances for the first objective, or None (said in the log)
    when too few trials completed or only one parameter is searched."""
    import matplotlib.pyplot as plt
    import optuna

    assert spec.search is not None
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(spec.search.space) < 2 or len(complete) < MIN_TRIALS_FOR_IMPORTANCES:
        log.info(
            f"parameter importances skipped: they need {MIN_TRIALS_FOR_IMPORTANCES} completed "
            f"trials and 2 searched parameters (have {len(complete)} and {len(spec.search.space)})"
        )
        return None
    try:
        importances = optuna.importance.get_param_importances(study, target=lambda t: t.values[0])
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        log.info(f"parameter importances skipped: {exc}")
        return None
    names = list(importances)[::-1]
    figure, axis = plt.subplots(figsize=(9, 1.2 + 0.6 * len(names)))
    axis.barh(names, [importances[n] for n in names], color="tab:blue")
    for y, name in enumerate(names):
        axis.annotate(
            f"{importances[name]:.2f}",
            (importances[name], y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    axis.set_xlabel(f"importance for {goal.metric} (fANOVA, {len(complete)} completed trials)")
    axis.set_title(f"{spec.name}: parameter importances")
    axis.set_xlim(0, 1.1)
    return figure


def pareto_front_plot(spec: Spec, study: Any) -> Any | None:
    """Optuna's Pareto-front plot of the completed trials (two or three objectives)."""
    import warnings

    import optuna
    from optuna.visualization import matplotlib as views

    assert spec.search is not None
    names = [g.metric for g in spec.search.goals]
    if len(names) not in (2, 3) or not any(t.state.name == "COMPLETE" for t in study.trials):
        return None
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    axes = views.plot_pareto_front(study, target_names=names)
    axes.set_title(f"{spec.name}: Pareto front of the completed trials")
    return axes.figure


def sweep_figures(
    spec: Spec, outcomes: list[TrialOutcome], histories: History
) -> list[tuple[str, Any]]:
    """(name, matplotlib figure) for every plot the sweep's trials support."""
    import matplotlib

    matplotlib.use("Agg")
    assert spec.search is not None
    figures: list[tuple[str, Any]] = []
    if histories:
        figures.append(("objective_per_epoch", objective_per_epoch(spec, outcomes, histories)))
    if any(not math.isnan(o.value(spec.search.primary.metric)) for o in outcomes):
        figures.append(("optimization_history", optimization_history(spec, outcomes)))
    finished = [o for o in outcomes if o.status.finished]
    if spec.search.space and len(finished) >= 2:
        figures.append(("parallel_coordinates", parallel_coordinates(spec, outcomes)))
    study = study_from_outcomes(spec, outcomes)
    for name, figure in (
        ("param_importances", param_importances(spec, study, spec.search.primary)),
        ("pareto_front", pareto_front_plot(spec, study)),
    ):
        if figure is not None:
            figures.append((name, figure))
    for _, figure in figures:
        figure.tight_layout()
    return figures
