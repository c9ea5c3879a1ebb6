"""The study's searcher: Ray's OptunaSearch, recording trials ASHA stopped as Optuna's PRUNED.

A module of its own because Ray pickles the searcher with the study (so the class must be
importable) and ``study.tune`` stays free of Ray at import (the demo's Study tab reads it).
"""

from __future__ import annotations

from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch


class PruningOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, except that
    - a trial ASHA stopped before ``max_t`` epochs is recorded in the Optuna study as PRUNED (with its
      per-epoch values), not as COMPLETE at its last epoch's accuracy: TPE and Optuna's plots then treat
      it as they treat a trial Optuna's own pruner stopped;
    - every epoch's value is reported, the last one too (Ray passes it only to ``on_trial_complete``), at
      the trial's epoch rather than Ray's training_iteration, which starts again from 1 when a failed
      trial is retried from its checkpoint."""

    def __init__(self, *args, max_t: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_t = max_t

    def on_trial_result(self, trial_id: str, result: dict):
        super().on_trial_result(trial_id, {**result, TRAINING_ITERATION: result.get("epoch", result[TRAINING_ITERATION])})

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if result is not None and not error:  # Ray hands a trial's last result here, not to on_trial_result
            self.on_trial_result(trial_id, result)
        stopped_early = not error and result is not None and result.get("epoch", self.max_t) < self.max_t
        super().on_trial_complete(trial_id, None if stopped_early else result, error)  # no value: PRUNED
