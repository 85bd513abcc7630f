"""95% intervals on behaviour metrics measured over a few dozen held-out prompts.

A task scores each evaluated prompt (or turn) into a record: metric -> that prompt's score
in [0, 1], for the metrics that apply to it. A metric is the mean of its scores over the
records it applies to, and gets Wilson's score interval over that many prompts: exact for a
proportion of 0/1 scores (`triggered_accuracy`, `tool_call_valid`, `json_valid/<step>`), and
conservative for a mean of scores in [0, 1] (`field_accuracy`), whose variance is at most
that of a proportion with the same mean. A composite score (`trigger_score`, the lower of
two accuracies; `chat_score` and the pipeline's scores, means of means) rises with each of
its parts, so its bounds are the composite of the parts' bounds.

Not a bootstrap over prompts: when every prompt is right (or wrong), every resample is too,
and the interval collapses to the point, so a trial with 40 of 40 would look surely better
than one with 39 of 40. Wilson's bounds stay honest there (40 of 40: [0.91, 1]).

Each interval is reported beside its metric as `<metric>_ci_low` and `<metric>_ci_high`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Z95 = 1.959963984540054
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


def interval_metrics(
    records: Sequence[dict[str, float]],
    composite: Callable[[dict[str, float]], dict[str, float]] | None = None,
) -> dict[str, float]:
    """`<metric>_ci_low` / `_ci_high` for every metric the records score (Wilson over the
    records it applies to) and every metric `composite` computes from their means (the
    composite of the bounds). Empty for no records."""
    if not records:
        return {}
    keys = list(dict.fromkeys(k for record in records for k in record))
    lows: dict[str, float] = {}
    highs: dict[str, float] = {}
    for key in keys:
        values = [min(1.0, max(0.0, r[key])) for r in records if key in r]
        lows[key], highs[key] = wilson(sum(values), len(values))
    out: dict[str, float] = {}
    for key in keys:
        out[key + LOW], out[key + HIGH] = lows[key], highs[key]
    if composite is not None:
        low, high = composite(lows), composite(highs)
        for name in low.keys() & high.keys():
            out[name + LOW], out[name + HIGH] = low[name], high[name]
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
