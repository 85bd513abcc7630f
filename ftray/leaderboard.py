"""The leaderboard: trials of a spec's latest sweep, best first, read back from MLflow."""

from __future__ import annotations

import math
from typing import Any

from ftray.spec import Spec
from ftray.tracking import ROLE_TAG, TRIAL_ID_TAG, TRIAL_STATUS_TAG

STATUS_RANK = {"completed": 0, "pruned": 1}


def rank_key(status: str, value: float, mode: str) -> tuple[int, float]:
    """Sort key: completed trials first, then pruned, then failed; best value first within each."""
    if math.isnan(value):
        return (3, 0.0)
    return (STATUS_RANK.get(status, 2), -value if mode == "max" else value)


def latest_sweep_run(client: Any, spec: Spec) -> Any | None:
    """The most recent parent run of the spec's experiment, or None."""
    experiment = client.get_experiment_by_name(spec.name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def leaderboard_rows(client: Any, spec: Spec, parent: Any) -> list[dict[str, Any]]:
    """One row per trial of the sweep `parent`, best first (failed trials last)."""
    assert spec.search is not None
    objective, mode = spec.search.objective, spec.search.mode
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        max_results=5000,
    )
    rows = []
    for run in children:
        value = run.data.metrics.get(objective, math.nan)
        row = {
            "trial": run.data.tags.get(TRIAL_ID_TAG, run.info.run_id[:8]),
            "status": run.data.tags.get(TRIAL_STATUS_TAG, run.info.status.lower()),
            objective: value,
            "epochs": int(run.data.metrics.get("epoch", 0)),
        }
        for path in spec.search.space:
            row[path] = run.data.params.get(path, "")
        row["run_id"] = run.info.run_id
        rows.append(row)

    return sorted(rows, key=lambda row: rank_key(row["status"], row[objective], mode))


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
    """The leaderboard text for the spec's latest sweep, or None if it never ran."""
    parent = latest_sweep_run(client, spec)
    if parent is None or spec.search is None:
        return None
    rows = leaderboard_rows(client, spec, parent)
    columns = ["rank", "trial", "status", spec.search.objective, "epochs", *spec.search.space]
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    title = f"sweep {parent.info.run_name} ({parent.info.run_id}), {len(rows)} trials, {spec.search.mode} {spec.search.objective}"
    return title + "\n" + format_table(rows, columns)
