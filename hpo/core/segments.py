"""What a worker does next in a study with a scheduler, and what each segment's trial carries.

One entry for workers, the budget and the API over both kinds of scheduler: rungs
(``hpo.core.scheduling``: ASHA, top-k, adaptive) and PBT (``hpo.core.pbt``). A decision is
a pure function of the study's trials; a worker takes it under the study's lock and claims
what it says in the same critical section (``worker.loop``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpo.core.pbt import LINEAGE_ATTR, SLOT_ATTR, ContinueMember, members, pbt_next
from hpo.core.progress import is_record
from hpo.core.scheduling import (
    CONTINUES_ATTR,
    UNTIL_ATTR,
    Continue,
    Idle,
    Start,
    configurations,
    first_until,
    next_work,
)
from hpo.core.spec import PBTSchedulerSpec, SearchSpec
from hpo.core.storage import RETRIED_FROM_ATTR

Decision = Start | Continue | ContinueMember | Idle


def scheduled(search: SearchSpec) -> bool:
    return search.scheduler.type != "none"


def started(trials: Sequence[FrozenTrial], search: SearchSpec) -> int:
    """Configurations started, which ``budget.max_trials`` counts (PBT: members). One that
    failed before it reported anything is not one, as a failed trial does not count without
    a scheduler."""
    trials = [t for t in trials if not is_record(t)]
    if isinstance(search.scheduler, PBTSchedulerSpec):
        return len(members(trials))
    return sum(not (c.status == "stopped" and not c.values) for c in configurations(trials))


def decide(
    trials: Sequence[FrozenTrial], search: SearchSpec, *, max_trials: int, seed: int
) -> Decision:
    """The next segment of a scheduled study, from all its trials.

    Args:
        max_trials: Configurations the budget allows (``hpo.core.budget.max_trials``).
        seed: PBT's decisions draw from a stream seeded by it (the study's seed).
    """
    trials = [t for t in trials if not is_record(t)]
    minimize = search.objective.direction == "minimize"
    can_start = started(trials, search) < max_trials
    if isinstance(search.scheduler, PBTSchedulerSpec):
        decision = pbt_next(members(trials), search.scheduler, search.space, seed=seed,
                            minimize=minimize)  # fmt: skip
        if isinstance(decision, Start) and not can_start:
            busy = (TrialState.RUNNING, TrialState.WAITING)
            return Idle(done=not any(t.state in busy for t in trials))
        return decision
    return next_work(configurations(trials), search.scheduler, can_start=can_start,
                     minimize=minimize)  # fmt: skip


def waiting(trials: Sequence[FrozenTrial]) -> bool:
    """Whether a trial is queued (a continuation, a retry, one a user enqueued): it is claimed
    before any new decision, so that nothing queued is left behind."""
    return any(t.state == TrialState.WAITING for t in trials)


def first_segment_attrs(trials: Sequence[FrozenTrial], search: SearchSpec) -> dict[str, Any]:
    """User attributes of a new configuration's first segment, set as it is claimed: where
    it pauses and, with PBT, the member it is."""
    trials = [t for t in trials if not is_record(t)]
    scheduler = search.scheduler
    if isinstance(scheduler, PBTSchedulerSpec):
        return {UNTIL_ATTR: scheduler.interval_steps, SLOT_ATTR: len(members(trials))}
    until = first_until(configurations(trials), scheduler)
    return {} if until is None else {UNTIL_ATTR: until}


def starts_configuration(trial: FrozenTrial) -> bool:
    """Whether a queued trial starts a configuration (one a user enqueued) rather than
    continue or retry a segment of one."""
    return not {CONTINUES_ATTR, RETRIED_FROM_ATTR} & trial.user_attrs.keys()


@dataclass(frozen=True)
class Continuation:
    """A segment to enqueue: ``params`` (fixed) and ``attrs`` (its user attributes)."""

    params: dict[str, Any]
    attrs: dict[str, Any]


def continuation(decision: Continue | ContinueMember, trials: Sequence[FrozenTrial]
                 ) -> Continuation:  # fmt: skip
    attrs: dict[str, Any] = {CONTINUES_ATTR: decision.trial}
    if decision.until is not None:
        attrs[UNTIL_ATTR] = decision.until
    if isinstance(decision, ContinueMember):
        attrs[SLOT_ATTR] = decision.slot
        if decision.lineage is not None:
            attrs[LINEAGE_ATTR] = decision.lineage.to_attr()
        return Continuation(dict(decision.params), attrs)
    parent = next(t for t in trials if t.number == decision.trial)
    return Continuation(dict(parent.params), attrs)


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
        return cls(user_attrs.get(UNTIL_ATTR), user_attrs.get(CONTINUES_ATTR))


def decision_seed(search: SearchSpec, study_row_id: int) -> int:
    """The seed of a study's scheduler decisions: the sampler's, else the study's row id."""
    seed = getattr(search.sampler, "seed", None)
    return seed if seed is not None else study_row_id
