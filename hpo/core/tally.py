"""A study's trials counted as a person reads them: configurations against the budget, the
segments they ran as, and trials queued again apart from those that failed.

Optuna counts trials. With a scheduler one configuration runs as several segments (a paused
trial, then the one that continues it) and the budget counts configurations; a trial a
stopped worker left is failed and queued again as a retry of it. Counting trials, a study of
10 configurations read ``22/10 finished, 2 failed`` where nothing had failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hpo.core import records
from hpo.core.records import HasState


class HasNumber(HasState, Protocol):
    """A trial with its number: ``FrozenTrial`` or ``TrialPublic``."""

    @property
    def number(self) -> int: ...


@dataclass(frozen=True)
class Tally:
    """``scheduled``: the budget counts configurations started (a scheduler's segments), else
    trials that ended with a result."""

    budget: int
    scheduled: bool
    configurations: int = 0
    complete: int = 0
    pruned: int = 0
    paused: int = 0
    running: int = 0
    waiting: int = 0
    failed: int = 0
    # gave their worker up with their state kept (preempted, their study paused or stopped,
    # their worker stopped: a continuation carries each on), or failed as their worker was
    # lost and queued again (a retry of each exists)
    interrupted: int = 0

    @property
    def segments(self) -> int:
        """Trials that ended with a result: complete, pruned, or paused to continue."""
        return self.complete + self.pruned + self.paused

    @property
    def spent(self) -> int:
        """What the budget counts, never past it (a race may end a trial past it)."""
        return min(self.configurations if self.scheduled else self.segments, self.budget)

    def budget_line(self) -> str:
        """``configurations 7/10`` or ``trials 7/10``."""
        unit = "configurations" if self.scheduled else "trials"
        return f"{unit} {self.spent}/{self.budget}"

    def detail_line(self) -> str:
        """The segments by state, then running, queued again and failed trials."""
        states = f"{self.complete} complete, {self.pruned} pruned"
        parts = (
            [f"{self.segments} segments ({states}, {self.paused} paused)"]
            if self.scheduled
            else [states]
        )
        if self.running:
            parts.append(f"{self.running} running")
        if self.interrupted:
            parts.append(f"{self.interrupted} interrupted (continued or queued again)")
        parts.append(f"{self.failed} failed")
        return ", ".join(parts)


def tally(trials: Sequence[HasNumber], *, budget: int, scheduled: bool) -> Tally:
    """Count ``trials`` (``FrozenTrial`` or REST ``TrialPublic``); infeasible records are not
    trials that ran and are left out."""
    ran = [t for t in trials if not records.is_infeasible_record(t)]
    retried = interrupted_numbers(ran)
    counts = dict.fromkeys(("complete", "paused", "pruned", "running", "waiting"), 0)
    failed = interrupted = configurations = 0
    for trial in ran:
        configurations += records.starts_configuration(trial)
        state = _state(trial)
        if state == "fail":
            interrupted += trial.number in retried
            failed += trial.number not in retried
        elif state == "pruned" and records.yielded(trial) is not None:
            interrupted += 1
        elif state == "pruned" and records.segment_status(trial) == "paused":
            counts["paused"] += 1
        elif state in counts:
            counts[state] += 1
    return Tally(
        budget=budget,
        scheduled=scheduled,
        configurations=configurations,
        failed=failed,
        interrupted=interrupted,
        **counts,
    )


def interrupted_numbers(trials: Sequence[HasNumber]) -> set[int]:
    """Numbers of the failed trials that were queued again (a retry of each exists)."""
    return {n for n in (records.retried_from(t) for t in trials) if n is not None}


def _state(trial: HasState) -> str:
    state = trial.state
    return state.lower() if isinstance(state, str) else state.name.lower()
