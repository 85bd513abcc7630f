"""The leaderboard: trials of a spec's latest sweep, best first, read back from MLflow.

Ranked in the order the sweep picked its winner by (`ftray.tracking.ranking`), with what the
sweep recorded on its parent run (its objectives and select rule), so row 1 is the registered
trial and editing the spec afterwards does not re-rank a finished sweep.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ftray.config.search import Objective, SelectRule
from ftray.config.spec import Spec
from ftray.tasks.intervals import HIGH, LOW, shown_with_interval
from ftray.tracking.ranking import rank_key, ranked_metrics
from ftray.tracking.spend import describe_spend
from ftray.tracking.store import child_runs, latest_sweep_run, step_sweep_run
from ftray.tracking.tags import (
    CONFIRMED,
    EACH_STEP_ROLE,
    OBJECTIVES,
    PARETO,
    PHASE,
    PRUNE,
    ROLE,
    SELECT,
    STEP,
    STEPS,
    STOPPED_AT,
    STOPPED_ON,
    TRIAL_ERROR,
    TRIAL_ID,
    TRIAL_STATUS,
    TrialStatus,
)


def recorded_search(parent: Any, spec: Spec) -> tuple[tuple[Objective, ...], SelectRule]:
    """The objectives and select rule the sweep `parent` ran with (the spec's if unrecorded)."""
    tags = parent.data.tags
    if OBJECTIVES in tags:
        goals = tuple(Objective.model_validate(g) for g in json.loads(tags[OBJECTIVES]))
        rule = (
            SelectRule.model_validate(json.loads(tags[SELECT]))
            if SELECT in tags
            else SelectRule(metric=goals[0].metric, mode=goals[0].mode)
        )
        return goals, rule
    assert spec.search is not None
    return spec.search.goals, spec.search.selection


def search_drift(parent: Any, spec: Spec) -> str | None:
    """What the spec now says about objectives and selection, when it differs from what the
    sweep `parent` recorded (the leaderboard ranks by the recorded), else None."""
    assert spec.search is not None
    if OBJECTIVES not in parent.data.tags:
        return None
    goals, rule = recorded_search(parent, spec)
    if (goals, rule) == (spec.search.goals, spec.search.selection):
        return None
    return (
        f"the spec now says {describe_search(spec.search.goals, spec.search.selection)}; "
        f"sweep {parent.info.run_name} ran with {describe_search(goals, rule)} and is ranked by that"
    )


def recorded_space(parent: Any, spec: Spec) -> list[str]:
    """The dotted paths the sweep `parent` searched (params `space.<path>`), in the order the
    spec lists them; the spec's own space for a sweep that recorded none."""
    assert spec.search is not None
    recorded = [
        key.removeprefix("space.") for key in parent.data.params if key.startswith("space.")
    ]
    if not recorded:
        return list(spec.search.space)
    ordered = [path for path in spec.search.space if path in recorded]
    return ordered + sorted(set(recorded) - set(ordered))


def describe_search(goals: tuple[Objective, ...], rule: SelectRule) -> str:
    """`max trigger_score`, or the objectives and the select rule when there is more to say."""
    text = ", ".join(str(goal) for goal in goals)
    if len(goals) == 1 and rule.objective == goals[0] and not rule.where:
        return text
    return f"objectives {text}; select {rule}"


def describe_pruning(prune: Mapping[str, Any]) -> str:
    """`ASHA stops on min eval_loss at rungs 1, 2, 4 (epochs)` from the sweep's prune tag."""
    rungs = ", ".join(f"{epoch:g}" for epoch in prune.get("rungs", [])) or "none"
    return f"ASHA stops on {prune['mode']} {prune['metric']} at rungs (epochs) {rungs}"


def stopped_cell(run: Any, prune: Mapping[str, Any] | None) -> str:
    """Where ASHA stopped a pruned trial: `eval_loss 2.31 @ rung 1 (epoch 1)`; '' otherwise."""
    tags = run.data.tags
    metric = tags.get(STOPPED_ON)
    if metric is None:
        return ""
    epoch = float(tags.get(STOPPED_AT, run.data.metrics.get("epoch", math.nan)))
    value = run.data.metrics.get(metric, math.nan)
    rungs = [float(e) for e in (prune or {}).get("rungs", [])]
    where = (
        f"rung {rungs.index(epoch) + 1} (epoch {epoch:g})" if epoch in rungs else f"epoch {epoch:g}"
    )
    return f"{metric} {value:.4g} @ {where}"


def metric_columns(goals: tuple[Objective, ...], rule: SelectRule) -> tuple[list[str], list[str]]:
    """The metric columns: the objectives, the select rule's metric and tie-break (before the
    pareto column), and eval_loss, the order's last metric (after it) unless already shown."""
    front = list(dict.fromkeys([*(g.metric for g in goals), rule.metric]))
    front += [g.metric for g in rule.tie_break if g.metric not in front]
    back = [g.metric for g in ranked_metrics(goals, rule) if g.metric not in front]
    return front, back


def leaderboard_rows(
    client: Any, spec: Spec, parent: Any, goals: tuple[Objective, ...], rule: SelectRule
) -> list[dict[str, Any]]:
    """One row per trial of the sweep `parent`, best first (`ranking.rank_key`: the trial the
    sweep registered first, failed trials last)."""
    assert spec.search is not None
    prune = json.loads(parent.data.tags[PRUNE]) if PRUNE in parent.data.tags else None
    rows = []
    for run in child_runs(client, parent):
        metrics = run.data.metrics
        row: dict[str, Any] = {
            "trial": run.data.tags.get(TRIAL_ID, run.info.run_id[:8]),
            "status": run.data.tags.get(TRIAL_STATUS, run.info.status.lower()),
        }
        for metric in sum(metric_columns(goals, rule), []):
            row[metric] = shown_with_interval(
                metrics.get(metric, math.nan), metrics.get(metric + LOW), metrics.get(metric + HIGH)
            )
        if len(goals) > 1:
            row["pareto"] = {"true": "yes", "false": "no"}.get(run.data.tags.get(PARETO, ""), "-")
        row["epochs"] = int(metrics.get("epoch", 0))
        row["stopped"] = stopped_cell(run, prune)
        for path in recorded_space(parent, spec):
            row[path] = run.data.params.get(path, "")
        row["run_id"] = run.info.run_id
        row["_error"] = run.data.tags.get(TRIAL_ERROR, "")
        row["phase"] = run.data.tags.get(PHASE, "search")
        # With search.confirm the registered trial won on its configuration's mean: first.
        confirmed = row["trial"] == parent.data.tags.get(CONFIRMED)
        row["_key"] = (not confirmed, *rank_key(row["status"], metrics, row["trial"], goals, rule))
        rows.append(row)
    return sorted(rows, key=lambda row: row["_key"])


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table with a header and aligned columns."""

    def cell(value: Any) -> str:
        if (
            isinstance(value, str)
            and value.replace(".", "", 1).replace("e-", "", 1).isdigit()
            and "." in value
        ):
            value = float(value)  # params come back from MLflow as text
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    body = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [
        max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(columns)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def render_leaderboard(client: Any, spec: Spec) -> str | None:
    """The leaderboard text for the spec's latest sweep (one board per step after
    `--each-step`), or None if it never ran."""
    parent = latest_sweep_run(client, spec)
    if parent is None or spec.search is None:
        return None
    if parent.data.tags.get(ROLE) != EACH_STEP_ROLE:
        return render_sweep(client, spec, parent)
    boards = []
    for step in json.loads(parent.data.tags.get(STEPS, "[]")):
        step_run = step_sweep_run(client, parent.info.run_id, step)
        boards.append(
            f"step {step}: no sweep recorded"
            if step_run is None
            else render_sweep(client, spec, step_run)
        )
    return f"each-step run {parent.info.run_name} ({parent.info.run_id})\n\n" + "\n\n".join(boards)


def render_sweep(client: Any, spec: Spec, parent: Any) -> str:
    """The leaderboard text of the sweep whose parent run is `parent`."""
    assert spec.search is not None
    goals, rule = recorded_search(parent, spec)
    rows = leaderboard_rows(client, spec, parent, goals, rule)
    metrics, last_metrics = metric_columns(goals, rule)
    pareto = ["pareto"] if len(goals) > 1 else []
    prune = json.loads(parent.data.tags[PRUNE]) if PRUNE in parent.data.tags else None
    stopped = ["stopped"] if any(row["stopped"] for row in rows) else []
    phase = ["phase"] if any(row["phase"] != "search" for row in rows) else []
    columns = [
        "rank",
        "trial",
        "status",
        *phase,
        *metrics,
        *pareto,
        *last_metrics,
        "epochs",
        *stopped,
        *recorded_space(parent, spec),
    ]
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    step = parent.data.tags.get(STEP)
    title = (
        f"{f'step {step}: ' if step else ''}sweep {parent.info.run_name} ({parent.info.run_id}), "
        f"{len(rows)} trials, {describe_search(goals, rule)}"
    )
    if prune is not None:
        title += f"; {describe_pruning(prune)}"
    text = title + "\n" + format_table(rows, columns)
    confirmed = parent.data.tags.get(CONFIRMED)
    if confirmed:
        text += (
            f"\nconfirmed: trial {confirmed}'s configuration won on its mean over its seeds "
            "(search.confirm); it is registered, so it comes first"
        )
    spent = describe_spend(parent.data.metrics)
    if spent:
        text += f"\n{spent}"
    for row in rows:
        if row["status"] == TrialStatus.FAILED.value:
            text += f"\nfailed: trial {row['trial']}: {row['_error'] or 'no error recorded'}"
    if pareto:
        text += (
            "\npareto: yes = on the Pareto front of the completed trials; trials stopped early "
            "(pruned) were measured at fewer epochs and are never on it"
        )
    return text
