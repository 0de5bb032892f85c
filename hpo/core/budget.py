"""When a study's budget is spent: finished trials, wall-clock time, device hours."""

from __future__ import annotations

import datetime as dt

from optuna.storages import RDBStorage

from hpo.core import records
from hpo.core.db import StudyRecord, utcnow
from hpo.core.progress import TrialCounts, user_attr_sum

# Re-exported for worker/ modules that still import them from here; hpo.core.records owns them.
from hpo.core.records import DEVICE_SECONDS_ATTR as DEVICE_SECONDS_ATTR
from hpo.core.records import EXAMPLES_TRAINED_ATTR as EXAMPLES_TRAINED_ATTR
from hpo.core.segments import Idle, decide, decision_seed, scheduled
from hpo.core.spec import PBTSchedulerSpec, SearchSpec, StudySpec, grid_size


def max_trials(search: SearchSpec) -> int:
    """The number of trials the study runs: a grid has no more points than it has."""
    if search.sampler.type == "grid":
        size = grid_size(search.space)
        if size is not None:
            return min(search.budget.max_trials, size)
    return search.budget.max_trials


def spent_reason(
    storage: RDBStorage, record: StudyRecord, spec: StudySpec, counts: TrialCounts
) -> str | None:
    """Why no new trial may start, or None while budget is left."""
    budget = spec.search.budget
    if scheduled(spec.search):
        if (reason := _schedule_done(storage, record, spec)) is not None:
            return reason
    elif counts.finished >= max_trials(spec.search):
        return f"max_trials={max_trials(spec.search)} reached"
    if budget.timeout_s is not None:
        created = record.created_at.replace(tzinfo=record.created_at.tzinfo or dt.UTC)
        if (utcnow() - created).total_seconds() > budget.timeout_s:
            return f"timeout_s={budget.timeout_s} reached"
    if budget.max_gpu_hours is not None:
        study_id = storage.get_study_id_from_name(record.name)
        hours = user_attr_sum(storage, study_id, records.DEVICE_SECONDS_ATTR) / 3600
        if hours >= budget.max_gpu_hours:
            return f"max_gpu_hours={budget.max_gpu_hours} reached ({hours:.3f} used)"
    return None


def _schedule_done(storage: RDBStorage, record: StudyRecord, spec: StudySpec) -> str | None:
    """With a scheduler, finished trials are segments: the study is done when no
    configuration may start, none runs and none of the paused ones will continue."""
    study_id = storage.get_study_id_from_name(record.name)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    limit = max_trials(spec.search)
    decision = decide(trials, spec.search, max_trials=limit,
                      seed=decision_seed(spec.search, record.id))  # fmt: skip
    if not isinstance(decision, Idle) or not decision.done:
        return None
    if isinstance(spec.search.scheduler, PBTSchedulerSpec):
        return f"PBT population of {spec.search.scheduler.population_size} trained to the end"
    return f"max_trials={limit} configurations ran; no paused one continues"
