"""Segments: where one pauses, the paused segment it continues, the rung it paused at, its
score after a cool-down branch; ``segment_status`` decodes a trial for the schedulers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from optuna.trial import TrialState

from hpo.core.records.base import Attrs, HasState, Writable, _attrs, _float, _int
from hpo.core.records.keys import (
    CONTINUES_ATTR,
    COOLED_ATTR,
    LINEAGE_ATTR,
    PAUSED_AT_ATTR,
    PRUNE_REASON_ATTR,
    SLOT_ATTR,
    UNTIL_ATTR,
    YIELDED_ATTR,
)
from hpo.core.records.outcome import retried_from

SegmentStatus = Literal["running", "paused", "complete", "stopped"]


def segment_status(trial: HasState) -> SegmentStatus:
    """What a trial (one segment of a configuration) is now, as schedulers read it.

    - ``running``: RUNNING or WAITING (claimed or queued: it will report);
    - ``paused``: PRUNED with ``hpo_paused_at``: it reached its rung and its state was kept,
      so a scheduler may continue it (samplers read it as pruned there);
    - ``complete``: COMPLETE;
    - ``stopped``: FAIL, or PRUNED for good (a pruner, divergence, an infeasible record).

    Args:
        trial: A ``FrozenTrial`` (the schedulers, the simulator), or a REST ``TrialPublic``
            whose ``state`` is the lowercase name of Optuna's state.
    """
    state = trial.state if isinstance(trial.state, TrialState) else TrialState[trial.state.upper()]
    if state in (TrialState.RUNNING, TrialState.WAITING):
        return "running"
    if state == TrialState.COMPLETE:
        return "complete"
    if state == TrialState.PRUNED and PAUSED_AT_ATTR in trial.user_attrs:
        return "paused"
    return "stopped"


def until(record: Attrs) -> int | None:
    """Pause at the first evaluation at or after this many examples (None: run to the end)."""
    return _int(record, UNTIL_ATTR)


def continues(record: Attrs) -> int | None:
    """The number of the paused segment whose state this one loads (None: a fresh start)."""
    return _int(record, CONTINUES_ATTR)


def paused_at(record: Attrs) -> int | None:
    """The rung a segment paused at, its state kept (None: it did not pause)."""
    return _int(record, PAUSED_AT_ATTR)


def cooled_score(record: Attrs) -> float | None:
    """A paused segment's score at its rung after a cool-down branch."""
    return _float(record, COOLED_ATTR)


def parent(record: Attrs) -> int | None:
    """The segment this one continues or retries (None: it starts its configuration)."""
    found = continues(record)
    return found if found is not None else retried_from(record)


def starts_configuration(record: Attrs) -> bool:
    """Whether a trial starts a configuration rather than continue or retry a segment."""
    return parent(record) is None


def segment_attrs(
    *,
    until: int | None = None,
    continues: int | None = None,
    slot: int | None = None,
    lineage: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The user attributes a segment is claimed or enqueued with (None: left out).

    Args:
        until: Where it pauses.
        continues: The paused segment whose state it loads.
        slot: Its PBT member.
        lineage: After a PBT exploit: the donor, its step and each perturbation.
    """
    attrs = {
        CONTINUES_ATTR: continues,
        UNTIL_ATTR: until,
        SLOT_ATTR: slot,
        LINEAGE_ATTR: None if lineage is None else dict(lineage),
    }
    return {k: v for k, v in attrs.items() if v is not None}


def set_until(trial: Writable, until: int) -> None:
    trial.set_user_attr(UNTIL_ATTR, until)


def mark_paused(trial: Writable, *, at: int, reason: str | None = None) -> None:
    """Record that a segment paused at rung ``at`` (its state already kept) and why (the
    simulator gives no reason); the trial is then told PRUNED."""
    trial.set_user_attr(PAUSED_AT_ATTR, at)
    if reason is not None:
        trial.set_user_attr(PRUNE_REASON_ATTR, reason)


def mark_yielded(trial: Writable, *, reason: str) -> None:
    """Record that a segment gave its worker up before its rung (its state kept, its
    continuation queued); the trial is then told PRUNED."""
    trial.set_user_attr(YIELDED_ATTR, reason)
    trial.set_user_attr(PRUNE_REASON_ATTR, reason)


def yielded(record: Attrs) -> str | None:
    """Why a segment gave its worker up before its rung (None: it did not)."""
    value = _attrs(record).get(YIELDED_ATTR)
    return None if value is None else str(value)


def set_cooled_score(trial: Writable, score: float) -> None:
    trial.set_user_attr(COOLED_ATTR, score)
