"""When a study's budget is spent: finished trials, wall-clock time, device hours."""

from __future__ import annotations

import datetime as dt

from optuna.storages import RDBStorage

from hpo.core import records
from hpo.core.db import StudyRecord, utcnow
from hpo.core.errors import SpecError
from hpo.core.progress import TrialCounts, user_attr_sum
from hpo.core.schedulers import Decision, Idle, build_scheduler
from hpo.core.schedulers.dispatch import decide, decision_seed
from hpo.core.settings import Settings
from hpo.core.spec import SearchSpec, StudySpec, grid_size


def max_trials(search: SearchSpec) -> int:
    """The number of trials the study runs: a grid has no more points than it has."""
    if search.sampler.type == "grid":
        size = grid_size(search.space)
        if size is not None:
            return min(search.budget.max_trials, size)
    return search.budget.max_trials


def trial_cap(search: SearchSpec) -> int | None:
    """The study's cap as the workers' scan reads it (``StudyRecord.trial_cap``): its number of
    trials, or None when a scheduler decides whether there is more work."""
    return None if build_scheduler(search).pauses else max_trials(search)


def trial_seconds(spec: StudySpec, settings: Settings) -> float:
    """How long one trial (segment) of the study may train: its own budget within the
    operator's ``HPO_MAX_TRIAL_S``."""
    asked = spec.search.budget.max_trial_s
    return settings.max_trial_s if asked is None else min(asked, settings.max_trial_s)


def check_trial_seconds(spec: StudySpec, settings: Settings) -> None:
    """Raises SpecError where the spec asks for longer trials than the operator allows."""
    asked = spec.search.budget.max_trial_s
    if asked is not None and asked > settings.max_trial_s:
        raise SpecError(
            f"max_trial_s={asked:g} is more than the {settings.max_trial_s:g} s the operator "
            "allows one trial (HPO_MAX_TRIAL_S)",
            loc=("search", "budget", "max_trial_s"),
        )


def spent_reason(
    storage: RDBStorage,
    record: StudyRecord,
    spec: StudySpec,
    counts: TrialCounts,
    decision: Decision | None,
) -> str | None:
    """Why no new trial may start, or None while budget is left.

    Args:
        decision: With a scheduler, the study's decision now (``decision_now``): it is done
            when that says ``Idle(done=True)``; None leaves that part unjudged.
    """
    budget = spec.search.budget
    scheduler = build_scheduler(spec.search)
    limit = max_trials(spec.search)
    # With a scheduler finished trials are segments: the study is done when no configuration
    # may start, none runs and none of the paused ones will continue.
    done = isinstance(decision, Idle) and decision.done
    if done if scheduler.pauses else counts.finished >= limit:
        return scheduler.done_reason(limit)
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


def decision_now(storage: RDBStorage, record: StudyRecord, spec: StudySpec) -> Decision | None:
    """The scheduler's decision on the study's trials now; None without a scheduler (the
    budget counts trials). For a check outside a claim: a worker's claim decides itself."""
    if not build_scheduler(spec.search).pauses:
        return None
    study_id = storage.get_study_id_from_name(record.name)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    return decide(
        trials,
        spec.search,
        max_trials=max_trials(spec.search),
        seed=decision_seed(spec.search, record.id),
        created_at=record.created_at,
    )
