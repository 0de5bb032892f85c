"""What a worker does next in a study with a scheduler, and what each segment's trial carries.

One entry for workers, the budget and the API over every scheduler (``builder``). A
decision is a pure function of the study's trials; a worker takes ONE per claim, under the
study's lock, and claims what it says in the same critical section (``worker.loop``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpo.core import records
from hpo.core.records import is_infeasible_record as is_record
from hpo.core.schedulers.base import Continuation, Decision, Resumption, Start
from hpo.core.schedulers.builder import build_scheduler
from hpo.core.spec import SearchSpec


def scheduled(search: SearchSpec) -> bool:
    """Whether the study's trials pause (its decisions, not trial counts, spend its budget)."""
    return build_scheduler(search).pauses


def started(trials: Sequence[FrozenTrial], search: SearchSpec) -> int:
    """Configurations started, which ``budget.max_trials`` counts (PBT: members)."""
    return build_scheduler(search).started([t for t in trials if not is_record(t)])


def decide(
    trials: Sequence[FrozenTrial],
    search: SearchSpec,
    *,
    max_trials: int,
    seed: int,
    created_at: dt.datetime | None = None,
) -> Decision:
    """The next segment of a scheduled study, from all its trials.

    Args:
        max_trials: Configurations the budget allows (``hpo.core.budget.max_trials``).
        seed: PBT's decisions draw from a stream seeded by it (the study's seed).
        created_at: When the study was registered, from which ``timeout_s`` counts (None:
            only a GPU-hour budget tells the scheduler what is left).
    """
    trials = [t for t in trials if not is_record(t)]
    scheduler = build_scheduler(search)
    can_start = scheduler.started(trials) < max_trials
    left = budget_left(trials, search, created_at)
    return scheduler.decide(trials, can_start=can_start, seed=seed, left=left)


def budget_left(
    trials: Sequence[FrozenTrial], search: SearchSpec, created_at: dt.datetime | None
) -> float | None:
    """Device seconds a time or GPU-hour budget has left (None without one): the GPU hours
    not yet spent, and the wall-clock seconds to the timeout on each running trial's worker
    and the asking one's."""
    budget, lefts = search.budget, []
    if budget.max_gpu_hours is not None:
        spent = sum(records.device_seconds(t) for t in trials)
        lefts.append(budget.max_gpu_hours * 3600 - spent)
    if budget.timeout_s is not None and created_at is not None:
        created = created_at.replace(tzinfo=created_at.tzinfo or dt.UTC)
        elapsed = (dt.datetime.now(dt.UTC) - created).total_seconds()
        running = sum(t.state == TrialState.RUNNING for t in trials)
        lefts.append((budget.timeout_s - elapsed) * (running + 1))
    return min(lefts) if lefts else None


def waiting(trials: Sequence[FrozenTrial]) -> bool:
    """Whether a trial is queued (a continuation, a retry, one a user enqueued): it is claimed
    before any new decision, so that nothing queued is left behind."""
    return any(t.state == TrialState.WAITING for t in trials)


def first_segment_attrs(
    trials: Sequence[FrozenTrial], search: SearchSpec, decision: Start | None = None
) -> dict[str, Any]:
    """User attributes of a new configuration's first segment, set as it is claimed: where
    it pauses and, with PBT, the member it is. ``decision``: the one it was claimed on
    (None: a user enqueued it)."""
    trials = [t for t in trials if not is_record(t)]
    return build_scheduler(search).first_attrs(trials, decision)


def starts_configuration(trial: FrozenTrial) -> bool:
    """Whether a queued trial starts a configuration (one a user enqueued) rather than
    continue or retry a segment of one."""
    return records.starts_configuration(trial)


def continuation(decision: Resumption, trials: Sequence[FrozenTrial]) -> Continuation:
    """The segment to enqueue for a decision to continue."""
    return decision.continuation(trials)


@dataclass(frozen=True)
class Segment:
    """What a claimed trial is, read from its user attributes.

    Attributes:
        until: Pause at the first evaluation at or after this many examples (None: run to
            the end).
        continues: The trial whose saved state it loads (None: a fresh adapter).
    """

    until: int | None
    continues: int | None

    @classmethod
    def of(cls, user_attrs: dict[str, Any]) -> Segment:
        return cls(records.until(user_attrs), records.continues(user_attrs))


def decision_seed(search: SearchSpec, study_row_id: int) -> int:
    """The seed of a study's scheduler decisions: the sampler's, else the study's row id."""
    seed = getattr(search.sampler, "seed", None)
    return seed if seed is not None else study_row_id
