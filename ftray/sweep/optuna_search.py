"""Ray Tune's OptunaSearch, telling Optuna a trial the scheduler stopped early as PRUNED.

Ray's OptunaSearch tells Optuna the last result of every trial that ends as COMPLETE, so a
trial ASHA stopped at its first rung would enter the study with a value measured after one
epoch (a behaviour metric is often still 0 then) as if that were where its configuration
ends up; TPE would then steer away from a region that was about to win.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

SUGGEST_SECONDS: list[float] = []
"""How long each proposal took in this process (Optuna's `ask`, TPE's modelling included),
in order; the sweep's runner reads it after Tune's run and clears it before."""


def stopped_early(result: dict[str, Any]) -> bool:
    """Whether a trial's last result comes from before its last planned epoch."""
    if "epochs_planned" not in result:
        return False
    return int(result.get("epoch", 0)) < int(result["epochs_planned"])


class PruneAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that reports a trial stopped before its last epoch as PRUNED, and a
    trial that raised as FAIL whatever it reported before.

    As with Optuna's own pruning, the result the trial was stopped at is its last
    intermediate value (one objective; Tune gives the searcher no results with several), and
    TPE ranks the trial below every completed one, by how far it got; the partial value is
    never a finished one.
    """

    budget_key: str | None = None
    """The parent run id of the sweep whose `search.budget` may end the search."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        from ftray.sweep.budget import Budget

        budget = Budget.for_sweep(self.budget_key)
        if budget is not None and not budget.affords_another():
            budget.decline()
            return Searcher.FINISHED
        started = time.perf_counter()
        config = super().suggest(trial_id)
        if isinstance(config, dict):  # not a "nothing now" or "no more"
            SUGGEST_SECONDS.append(time.perf_counter() - started)
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if error:
            super().on_trial_complete(trial_id, result=None, error=True)
        elif result is not None and stopped_early(result):
            # Tune withholds from the searcher the result a scheduler stops a trial on.
            self.on_trial_result(trial_id, result)
            # OptunaSearch tells PRUNED for a trial that ends without a result or an error.
            super().on_trial_complete(trial_id, result=None)
        else:
            super().on_trial_complete(trial_id, result=result)
