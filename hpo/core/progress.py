"""Read a study's progress from Optuna's tables: counts by state, a page of trials, best."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Exists,
    Float,
    ScalarSelect,
    Select,
    String,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    select,
)

from hpo.core import records
from hpo.core.db import ArtifactRecord
from hpo.core.optuna_tables import trial_user_attributes as attrs
from hpo.core.optuna_tables import trial_values, trials


@dataclass(frozen=True)
class TrialCounts:
    """A study's trials by state, infeasible records left out.

    ``paused`` are PRUNED trials that paused at a scheduler's rung with their state kept
    (``records.segment_status``), so ``pruned`` counts only those stopped for good.
    ``yielded`` are PRUNED segments that gave their worker up before their rung (a queued
    continuation carries the configuration on): no result, so not ``finished``.
    """

    complete: int = 0
    pruned: int = 0
    paused: int = 0
    yielded: int = 0
    fail: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        """Trials that ended with a result: complete, pruned or paused."""
        return self.complete + self.pruned + self.paused


def has_user_attr(key: str) -> Exists:
    """SQL: the trial of the enclosing query has the user attribute ``key``."""
    return exists().where(attrs.c.trial_id == trials.c.trial_id, attrs.c.key == key)


def is_a_record() -> Exists:
    """SQL: the trial of the enclosing query is an infeasible record (not a trial that ran)."""
    return has_user_attr(records.INFEASIBLE_RECORD_ATTR)


def is_paused() -> ColumnElement[bool]:
    """SQL: the trial paused at a scheduler's rung, its state kept (``segment_status``)."""
    return and_(trials.c.state == TrialState.PRUNED.name, has_user_attr(records.PAUSED_AT_ATTR))


def is_yielded() -> ColumnElement[bool]:
    """SQL: the segment gave its worker up before its rung (``records.mark_yielded``)."""
    return and_(trials.c.state == TrialState.PRUNED.name, has_user_attr(records.YIELDED_ATTR))


def trial_counts(source: RDBStorage | Connection, study_id: int) -> TrialCounts:
    """Trials by state, infeasible records left out: one aggregate query, any study size.

    ``source``: a storage (a connection from its pool) or a connection already held.
    """
    if isinstance(source, Connection):
        rows = source.execute(_COUNTS, {"study_id": study_id}).all()
    else:
        with source.engine.connect() as conn:
            rows = conn.execute(_COUNTS, {"study_id": study_id}).all()
    counts = {status.lower(): n for status, n in rows}
    return TrialCounts(**{k: counts.get(k, 0) for k in TrialCounts.__dataclass_fields__})


def _counts_query() -> Select[str, int]:
    each = (
        # Optuna's state is an enum on PostgreSQL: compared as text with our own "PAUSED"
        select(
            case(
                (is_paused(), "PAUSED"),
                (is_yielded(), "YIELDED"),
                else_=cast(trials.c.state, String),
            ).label("status")
        )
        .where(trials.c.study_id == bindparam("study_id"), ~is_a_record())
        .subquery()
    )
    return select(each.c.status, func.count()).group_by(each.c.status)


# Built once: building a statement and its cache key costs more than a small query's run.
_COUNTS = _counts_query()


def user_attr_sum(storage: RDBStorage, study_id: int, key: str) -> float:
    """The sum of a numeric user attribute over a study's trials (e.g. ``device_seconds``)."""
    query = (
        select(func.coalesce(func.sum(cast(attrs.c.value_json, Float)), 0.0))
        .join(trials, trials.c.trial_id == attrs.c.trial_id)
        .where(trials.c.study_id == study_id, attrs.c.key == key)
    )
    with storage.engine.connect() as conn:
        return float(conn.execute(query).scalar_one())


def trial_page(
    storage: RDBStorage,
    study_id: int,
    *,
    offset: int,
    limit: int,
    state: TrialState | Literal["paused"] | None = None,
) -> tuple[list[FrozenTrial], int]:
    """One page of a study's trials by number, and how many there are in all.

    ``state``: only trials in this Optuna state, or only the paused ones (PRUNED is Optuna's
    state of a paused trial too, so ``TrialState.PRUNED`` takes them with the others).
    """
    where = [trials.c.study_id == study_id]
    if state == "paused":
        where.append(is_paused())
    elif state is not None:
        where.append(trials.c.state == state.name)
    page = select(trials.c.trial_id).where(*where).order_by(trials.c.number)
    with storage.engine.connect() as conn:
        ids = conn.scalars(page.offset(offset).limit(limit)).all()
        total = conn.execute(select(func.count()).where(*where)).scalar_one()
    return [storage.get_trial(trial_id) for trial_id in ids], total


def best_trial(storage: RDBStorage, study_id: int) -> FrozenTrial | None:
    """The best COMPLETE trial, or None when no trial has completed with a finite value.

    Among equal values the lowest tie-break score wins (``records.tie_break``: a saturated
    generation metric falls back on eval_loss), then the trial with a stored adapter, then the
    earliest: ``/best`` and ``/best/adapter`` always name the same trial, and a worker keeps an
    adapter whenever its trial ties the best so far.
    """
    query = best_query(study_id, storage.get_study_directions(study_id)[0])
    with storage.engine.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else storage.get_trial(row.trial_id)


def best_ties(storage: RDBStorage, study_id: int) -> int:
    """How many COMPLETE trials share the best value (0: none completed; over 1: the metric
    saturated and the tie-break chose)."""
    query = best_query(study_id, storage.get_study_directions(study_id)[0])
    with storage.engine.connect() as conn:
        row = conn.execute(query).first()
    return 0 if row is None else int(row.ties)


def best_query(
    study_id: int | BindParameter[int], direction: StudyDirection
) -> Select[tuple[int, int, float, int]]:
    """The best COMPLETE trial's id, number and value, in ``best_trial``'s order, and ``ties``:
    how many COMPLETE trials have its value (over 1: the metric saturated, the tie-break
    chose)."""
    value = trial_values.c.value
    has_adapter = exists().where(ArtifactRecord.trial_id == trials.c.trial_id)
    ties = func.count().over(partition_by=value).label("ties")
    return (
        select(trials.c.trial_id, trials.c.number, value, ties)
        .join(trial_values, trial_values.c.trial_id == trials.c.trial_id)
        .where(_complete_and_finite(study_id))
        .order_by(
            value.asc() if direction == StudyDirection.MINIMIZE else value.desc(),
            _tie_break().asc().nulls_last(),
            case((has_adapter, 0), else_=1),
            trials.c.number,
        )
        .limit(1)
    )


def _complete_and_finite(study_id: int | BindParameter[int]) -> ColumnElement[bool]:
    return and_(
        trials.c.study_id == study_id,
        trials.c.state == TrialState.COMPLETE.name,
        trial_values.c.objective == 0,
        trial_values.c.value_type == "FINITE",
    )


def _tie_break() -> ScalarSelect[float]:
    """SQL: the enclosing query's trial's tie-break score (NULL without one)."""
    return (
        select(cast(attrs.c.value_json, Float))
        .where(attrs.c.trial_id == trials.c.trial_id, attrs.c.key == records.TIE_BREAK_ATTR)
        .scalar_subquery()
    )


def saturation_note(metric: str, value: float, ties: int, tie_break: str | None) -> str | None:
    """What ``hpo study show`` and ``hpo run`` say when the best value is shared (the metric
    saturated), or None when one trial holds it."""
    if ties < 2:
        return None
    chose = f"the lowest {tie_break} among them" if tie_break else "the earliest of them"
    return f"{metric} saturated: {ties} complete trials score {value:.4g}; best is {chose}"


def beats(value: float, than: float | None, *, minimize: bool) -> bool:
    """Whether ``value`` is strictly better than ``than`` (None: nothing to beat yet)."""
    if than is None:
        return True
    return value < than if minimize else value > than
