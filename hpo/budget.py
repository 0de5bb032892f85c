"""When a study's budget is spent: finished trials, wall-clock time, device hours."""

from __future__ import annotations

import datetime as dt

from optuna.storages import RDBStorage

from hpo.db import StudyRecord, utcnow
from hpo.progress import TrialCounts, user_attr_sum
from hpo.spec import StudySpec, grid_size

DEVICE_SECONDS_ATTR = "device_seconds"


def max_trials(spec: StudySpec) -> int:
    """The number of trials the study runs: a grid has no more points than it has."""
    if spec.sampler.type == "grid":
        size = grid_size(spec.search_space)
        if size is not None:
            return min(spec.budget.max_trials, size)
    return spec.budget.max_trials


def spent_reason(
    storage: RDBStorage, record: StudyRecord, spec: StudySpec, counts: TrialCounts
) -> str | None:
    """Why no new trial may start, or None while budget is left."""
    budget = spec.budget
    if counts.finished >= max_trials(spec):
        return f"max_trials={max_trials(spec)} reached"
    if budget.timeout_s is not None:
        created = record.created_at.replace(tzinfo=record.created_at.tzinfo or dt.UTC)
        if (utcnow() - created).total_seconds() > budget.timeout_s:
            return f"timeout_s={budget.timeout_s} reached"
    if budget.max_gpu_hours is not None:
        study_id = storage.get_study_id_from_name(record.name)
        hours = user_attr_sum(storage, study_id, DEVICE_SECONDS_ATTR) / 3600
        if hours >= budget.max_gpu_hours:
            return f"max_gpu_hours={budget.max_gpu_hours} reached ({hours:.3f} used)"
    return None
