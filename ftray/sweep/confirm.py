"""`search.confirm`: the best configurations trained again with new seeds, and a winner by
the mean over seeds.

One trial is one draw: a lucky seed can put a configuration first that is no better than
the next. After the search, the `top_k` best distinct configurations (in the leaderboard's
order) train again with `seeds` new run seeds each (`train.run_seed`: the held-out prompts
stay the same), as trials of the same sweep with the same resources, under the same parent
run, tagged `ftray.phase=confirm`. Each configuration's metrics are then averaged over its
trials, the search's one included; the select rule is applied to the means, and the
configuration that wins is registered through its best trial's adapter, with the means,
standard deviations and seed counts on the version.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, replace
from typing import Any

from ftray.config.spec import Spec
from ftray.sweep.objectives import TrialOutcome, choose_winner, ranked
from ftray.tasks.intervals import is_interval
from ftray.tracking.tags import TrialStatus

RUN_SEED = "train.run_seed"
PHASE_CONFIRM = "confirm"


def config_key(config: dict[str, Any]) -> str:
    """A configuration without its run seed, as text (trials of one configuration share it)."""
    return json.dumps({k: v for k, v in config.items() if k != RUN_SEED}, sort_keys=True)


def candidates(spec: Spec, outcomes: list[TrialOutcome]) -> list[TrialOutcome]:
    """The `top_k` best distinct configurations of the search: their first trial each, in
    the leaderboard's order, among the completed trials that left an adapter."""
    assert spec.search is not None and spec.search.confirm is not None
    done = [o for o in outcomes if o.status is TrialStatus.COMPLETED and o.checkpoint is not None]
    chosen: dict[str, TrialOutcome] = {}
    for outcome in ranked(done, spec.search.goals, spec.search.selection):
        chosen.setdefault(config_key(outcome.config), outcome)
        if len(chosen) == spec.search.confirm.top_k:
            break
    return list(chosen.values())


def confirmation_configs(spec: Spec, chosen: list[TrialOutcome]) -> list[dict[str, Any]]:
    """Each chosen configuration with each new run seed (the spec's seed + 1, + 2, ...)."""
    assert spec.search is not None and spec.search.confirm is not None
    seeds = spec.search.confirm.seeds
    return [
        {**outcome.config, RUN_SEED: spec.train.seed + 1 + k}
        for outcome in chosen
        for k in range(seeds)
    ]


@dataclass(frozen=True)
class Group:
    """One configuration's trials: the search's and its confirmations'."""

    key: str
    trials: list[TrialOutcome]

    def stats(self) -> dict[str, tuple[float, float, int]]:
        """metric -> (mean, standard deviation, trials) over the trials that report it."""
        names = {k for t in self.trials for k in t.metrics if not is_interval(k) and k != "epoch"}
        out = {}
        for name in sorted(names):
            values = [t.metrics[name] for t in self.trials if not math.isnan(t.value(name))]
            if values:
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                out[name] = (statistics.fmean(values), sd, len(values))
        return out


def groups_of(chosen: list[TrialOutcome], confirmations: list[TrialOutcome]) -> list[Group]:
    keys = [config_key(o.config) for o in chosen]
    members: dict[str, list[TrialOutcome]] = {k: [o] for k, o in zip(keys, chosen, strict=True)}
    for outcome in confirmations:
        if outcome.status is TrialStatus.COMPLETED and config_key(outcome.config) in members:
            members[config_key(outcome.config)].append(outcome)
    return [Group(k, members[k]) for k in keys]


def confirmed_winner(spec: Spec, groups: list[Group]) -> TrialOutcome | None:
    """The trial to register: the best trial of the configuration whose means win under the
    select rule, carrying the configuration's means (under the metrics' own names) and
    `<metric>_sd` and `<metric>_seeds` beside them."""
    assert spec.search is not None
    goals, rule = spec.search.goals, spec.search.selection
    summaries = []
    for group in groups:
        best = ranked([t for t in group.trials if t.checkpoint is not None], goals, rule)
        if not best:
            continue
        stats = group.stats()
        metrics: dict[str, float] = {"epoch": best[0].metrics.get("epoch", math.nan)}
        for name, (mean, sd, count) in stats.items():
            metrics[name] = mean
            metrics[f"{name}_sd"] = sd
            metrics[f"{name}_seeds"] = float(count)
        summaries.append(replace(best[0], metrics=metrics))
    return choose_winner(summaries, goals, rule)
