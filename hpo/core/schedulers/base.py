"""The scheduler interface: what workers, the budget, the API and the simulator ask of one.

A scheduler pauses configurations and continues some of them (Ray Tune's ``TrialScheduler``
over Optuna trials). Each runs in *segments*, each an Optuna trial with its params:

- the first segment is asked from the sampler as usual; its ``records.until`` says where it
  pauses (None: it runs to its end);
- a segment that reached its ``until`` step (its first evaluation at or after it) is told
  PRUNED, marked paused at that ``until`` (``records.mark_paused``) after its adapter and
  optimizer state were saved: samplers read it as a trial pruned there, which it is until
  someone continues it (``records.segment_status``);
- a continuation is a trial enqueued with ``records.continues`` = the paused segment; it
  loads that segment's state, reports the earlier values again (free) and trains on, so a
  configuration's last segment holds its whole curve on the fidelity axis.

Decisions are pure functions of the study's trials: a worker takes one under the study's
lock and claims what it says in the same critical section, so no two workers continue one
paused segment. One module per scheduler, registered in ``hpo.core.schedulers.builder``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from optuna.trial import FrozenTrial


@dataclass(frozen=True)
class Start:
    """Sample a new configuration; pause at the first evaluation at or after ``until`` (None:
    run it to its end)."""

    until: int | None


@dataclass(frozen=True)
class Idle:
    """Nothing to do now. ``done``: nothing runs either, so nothing ever will."""

    done: bool


@dataclass(frozen=True)
class Continuation:
    """A segment to enqueue: ``params`` (fixed) and ``attrs`` (its user attributes)."""

    params: dict[str, Any]
    attrs: dict[str, Any]


class Resumption(Protocol):
    """A decision to continue a paused configuration from segment ``trial``'s state, up to
    ``until`` (None: to its end)."""

    @property
    def trial(self) -> int: ...

    @property
    def until(self) -> int | None: ...

    def continuation(self, trials: Sequence[FrozenTrial]) -> Continuation:
        """The segment to enqueue, read from the study's trials where it needs them."""
        ...


Decision = Start | Idle | Resumption


class Scheduler(Protocol):
    """One scheduler, built for a study's search (``builder.build_scheduler``).

    Attributes:
        pauses: Whether trials pause at all; False: the budget counts finished trials.
        cools_down: Whether paused configurations are ranked by a cool-down branch's score.
        enqueue_refusal: Why a user may not enqueue a configuration, or None when they may.
        replay_refusal: Why recorded curves cannot replay it, or None when they can.
    """

    @property
    def pauses(self) -> bool: ...

    @property
    def cools_down(self) -> bool: ...

    @property
    def enqueue_refusal(self) -> str | None: ...

    @property
    def replay_refusal(self) -> str | None: ...

    def started(self, trials: Sequence[FrozenTrial]) -> int:
        """Configurations started, which ``budget.max_trials`` counts."""
        ...

    def decide(
        self,
        trials: Sequence[FrozenTrial],
        *,
        can_start: bool,
        seed: int,
        left: float | None = None,
    ) -> Decision:
        """What a worker asking for work does (``can_start``: the budget allows another
        configuration; ``seed``: the study's, for randomised decisions; ``left``: device
        seconds a time or GPU-hour budget has left, None without one)."""
        ...

    def first_attrs(
        self, trials: Sequence[FrozenTrial], decision: Start | None = None
    ) -> dict[str, Any]:
        """User attributes of a new configuration's first segment, set as it is claimed:
        after ``decision``, or (None) for a configuration a user enqueued."""
        ...

    def done_reason(self, max_trials: int) -> str:
        """Why the study is done once a decision says ``Idle(done=True)``."""
        ...
