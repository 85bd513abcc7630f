"""95% intervals on behaviour metrics measured over a few dozen held-out prompts.

A task scores each evaluated prompt (or turn) into a record: metric -> that prompt's score,
for the metrics that apply to it. A metric that is the mean of 0/1 scores over the records
it applies to (a proportion: `triggered_accuracy`, `tool_call_valid`, `json_valid/<step>`)
gets Wilson's interval, which stays inside [0, 1] and is honest at 0 and 1 with few prompts.
Any other mean (`field_accuracy`), and the task's composite scores computed from the means
(`trigger_score` = the lower accuracy, `chat_score`, `pipeline_score`), get a percentile
bootstrap over the records: resampled within strata (trigger conditions, pipeline steps),
a fixed number of times, with a fixed seed, so the same answers give the same interval.

Each interval is reported beside its metric as `<metric>_ci_low` and `<metric>_ci_high`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Z95 = 1.959963984540054
RESAMPLES = 1000
SEED = 0
LOW, HIGH = "_ci_low", "_ci_high"


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion `successes` / `n` ((0, 1) with no trials)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact at the ends
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def _means(records: Sequence[dict[str, float]], keys: list[str], rows: Sequence[int]):
    import numpy as np

    values = np.array(
        [[records[r].get(k, np.nan) for k in keys] for r in range(len(records))], dtype=float
    )
    sample = values[np.asarray(rows)]
    present = ~np.isnan(sample)
    counts = present.sum(axis=-2)
    sums = np.where(present, sample, 0.0).sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def bootstrap_indices(n: int, strata: Sequence[str] | None, resamples: int, seed: int):
    """`resamples` rows of `n` record indices, each drawn with replacement within its
    stratum (so each stratum keeps its size)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = list(strata) if strata is not None else [""] * n
    out = np.empty((resamples, n), dtype=int)
    for label in dict.fromkeys(labels):
        members = np.array([i for i, s in enumerate(labels) if s == label])
        out[:, members] = rng.choice(members, size=(resamples, len(members)), replace=True)
    return out


def interval_metrics(
    records: Sequence[dict[str, float]],
    composite: Callable[[dict[str, float]], dict[str, float]] | None = None,
    strata: Sequence[str] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> dict[str, float]:
    """`<metric>_ci_low` / `_ci_high` for every metric the records score (Wilson for 0/1
    scores, else a bootstrap) and every metric `composite` computes from their means (a
    bootstrap). Empty for no records."""
    import numpy as np

    if not records:
        return {}
    keys = list(dict.fromkeys(k for record in records for k in record))
    out: dict[str, float] = {}
    boot = None
    for key in keys:
        values = [r[key] for r in records if key in r]
        if all(v in (0.0, 1.0) for v in values):
            low, high = wilson(sum(values), len(values))
        else:
            if boot is None:
                boot = _means(
                    records, keys, bootstrap_indices(len(records), strata, resamples, seed)
                )
            column = boot[:, keys.index(key)]
            column = column[~np.isnan(column)]
            low, high = (float(np.percentile(column, 2.5)), float(np.percentile(column, 97.5)))
        out[key + LOW], out[key + HIGH] = low, high
    if composite is not None:
        if boot is None:
            boot = _means(records, keys, bootstrap_indices(len(records), strata, resamples, seed))
        draws: dict[str, list[float]] = {}
        for row in boot:
            means = {k: float(v) for k, v in zip(keys, row, strict=True) if not math.isnan(v)}
            for name, value in composite(means).items():
                if not math.isnan(value):
                    draws.setdefault(name, []).append(value)
        for name, values in draws.items():
            out[name + LOW] = float(np.percentile(values, 2.5))
            out[name + HIGH] = float(np.percentile(values, 97.5))
    return out


NO_INTERVAL = ("train_loss", "eval_loss")


def with_intervals(metrics: list[str], smooth: Sequence[str] = ()) -> list[str]:
    """`metrics`, then the interval bounds of each behaviour metric among them (not the losses
    nor the smooth metrics, which are no proportions over prompts)."""
    bounds = [
        m + bound
        for m in metrics
        if m not in NO_INTERVAL and m not in smooth
        for bound in (LOW, HIGH)
    ]
    return [*metrics, *bounds]


def is_interval(metric: str) -> bool:
    """Whether `metric` is an interval bound (`..._ci_low` / `..._ci_high`)."""
    return metric.endswith((LOW, HIGH))


def shown_with_interval(value: float, low: float | None, high: float | None) -> str:
    """`0.94 [0.85, 0.98]`, or the value alone without both bounds."""
    text = "-" if math.isnan(value) else f"{value:.4g}"
    if low is None or high is None or math.isnan(low) or math.isnan(high) or math.isnan(value):
        return text
    return f"{text} [{low:.2f}, {high:.2f}]"
