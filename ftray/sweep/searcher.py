"""Optuna proposes (TPE, multi-objective when the spec has several objectives); ASHA stops
(on `search.prune`'s metric: see `Spec.stopping`). Each layer decides
one thing: Optuna's own pruner stays off, and a trial ASHA stopped is PRUNED in the study."""

from __future__ import annotations

from typing import Any

from ftray.config.spec import Spec
from ftray.sweep.space import asha_max_t, optuna_space


def build_searcher(spec: Spec, study_name: str | None = None) -> Any:
    """OptunaSearch (TPE seeded by train.seed, sampling `search.startup_trials` trials at
    random first) over the spec's space; trials stopped early are PRUNED in the study,
    never completed with a partial value.

    With several objectives it gets lists of metrics and modes (Optuna multi-objective; Tune
    then reports only final results to it). With `storage.optuna_url` the study lives in that
    database under `study_name`, so it outlives the driver and can be read afterwards.
    """
    import optuna

    from ftray.sweep.optuna_search import PruneAwareOptunaSearch

    assert spec.search is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" lines
    goals = spec.search.goals
    from ftray.sweep.optuna_storage import PasswordFreeRDBStorage

    url = spec.storage.optuna_url
    storage = PasswordFreeRDBStorage(url) if url else None
    several = len(goals) > 1
    # Unset, Optuna's own default (10 random trials before TPE).
    count = spec.search.startup_trials
    startup = {} if count is None else {"n_startup_trials": count}
    return PruneAwareOptunaSearch(
        space=optuna_space(spec),
        metric=[g.metric for g in goals] if several else goals[0].metric,
        mode=[g.mode for g in goals] if several else goals[0].mode,
        sampler=optuna.samplers.TPESampler(seed=spec.train.seed, **startup),
        storage=storage,
        study_name=study_name if storage is not None else None,
    )


def build_scheduler(spec: Spec) -> Any:
    """ASHA on `search.prune` (its metric, rungs and max_t) with the epoch as time, or FIFO
    (no early stopping)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    assert spec.search is not None
    if spec.search.scheduler == "fifo":
        return FIFOScheduler()
    prune, stopping = spec.search.prune, spec.stopping
    return ASHAScheduler(
        time_attr="epoch",
        metric=stopping.metric,
        mode=stopping.mode,
        max_t=asha_max_t(spec),
        grace_period=prune.grace(asha_max_t(spec)),
        reduction_factor=prune.reduction_factor,
    )
