"""Read a study's trials from Optuna's storage: counts by state, the finished count, best."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

# A PRUNED copy of an out-of-memory trial that only tells samplers the config is infeasible;
# it is not a finished trial and does not count against the budget.
INFEASIBLE_RECORD_ATTR = "infeasible_record_of"


def is_record(trial: FrozenTrial) -> bool:
    return INFEASIBLE_RECORD_ATTR in trial.user_attrs


@dataclass(frozen=True)
class TrialCounts:
    complete: int = 0
    pruned: int = 0
    fail: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def trial_counts(storage: BaseStorage, study_id: int) -> TrialCounts:
    trials = storage.get_all_trials(study_id, deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials if not is_record(t))
    return TrialCounts(**{k: counts.get(k, 0) for k in TrialCounts.__dataclass_fields__})


def best_trial(storage: BaseStorage, study_id: int) -> FrozenTrial | None:
    """The best COMPLETE trial, or None when no trial has completed."""
    try:
        return storage.get_best_trial(study_id)
    except ValueError:
        return None
