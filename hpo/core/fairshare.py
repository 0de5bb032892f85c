"""Which study a worker serves next: owners first, then their studies, from one SQL statement.

``scan`` orders the studies in SQL and returns only the first few: the owner with the fewest
running trials per unit of weight first (ties: the owner served longest ago), and within an
owner the study with the fewest running trials (ties: the one served longest ago, then the
oldest). Owners take turns down the list, so one owner's thousand studies sit behind every
other owner's first. The statement reads running trials (a handful per worker), each owner's
queue head down an index (``ix_hpo_studies_queue``), and counts trials only for the studies
it returns, so its cost follows the fleet's running trials, not its number of studies. It
also names the studies whose running trials lost their heartbeat, wherever they sit.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Connection,
    Float,
    Integer,
    ScalarSelect,
    Select,
    Subquery,
    cast,
    column,
    func,
    literal,
    null,
    or_,
    select,
    table,
    true,
    union_all,
    update,
)
from sqlalchemy.orm import aliased

from hpo.core import owners
from hpo.core.db import OwnerRecord, StudyRecord, StudyStatus
from hpo.core.optuna_tables import studies as optuna_studies
from hpo.core.optuna_tables import trial_heartbeats as beats
from hpo.core.optuna_tables import trials
from hpo.core.owners import DEFAULT_WEIGHT
from hpo.core.progress import is_a_record, is_yielded

# The study record's columns the scan returns with each study, so a claim reads no more.
_RECORD = tuple(column.key for column in StudyRecord.__table__.columns)
_LOAD = {"name", "owner", "status", "served_at", "trial_cap"}  # in the scan's row already
# A worker's first look; it reads further (``Worker._run_next``) only when these have no work.
FIRST_PAGE = 8


@dataclass(frozen=True)
class StudyLoad:
    """One study as the scan sees it. ``max_trials`` is None for a study with a scheduler,
    whose next work only its scheduler knows. ``finished``: complete, pruned and paused
    trials (infeasible records left out)."""

    record_id: int
    name: str
    owner: str
    status: str
    optuna_id: int
    record: StudyRecord = field(compare=False, repr=False)  # as read, detached
    running: int = 0
    finished: int = 0
    waiting: int = 0
    stale: bool = False
    served_at: dt.datetime | None = None
    max_trials: int | None = 20
    weight: float = DEFAULT_WEIGHT


@dataclass(frozen=True)
class Scan:
    """``order``: the first ``limit`` studies a worker should try, best first. ``stale``:
    the other studies with a running trial past the grace period (or with no heartbeat),
    so a sweep is due before counts are exact (``order`` flags its own)."""

    order: list[StudyLoad]
    stale: list[StudyLoad]

    def swept(self) -> list[StudyLoad]:
        """Every study a sweep is due in."""
        return [load for load in self.order if load.stale] + self.stale


@dataclass(frozen=True)
class OwnerLoad:
    """An owner with running trials: how many (over all their studies) and their weight."""

    owner: str
    running: int
    weight: float


def scan(
    connection: Connection,
    *,
    grace_period: float,
    limit: int = FIRST_PAGE,
    max_running_per_owner: int | None = None,
    names: Collection[str] | None = None,
) -> Scan:
    """The head of the fair order, and the stale studies, in one statement.

    Args:
        grace_period: Seconds without a heartbeat, by the database's clock (as Optuna's own
            check), after which a running trial is stale.
        limit: How many studies of the order to return.
        max_running_per_owner: Owners with this many running trials are left out.
        names: Only these studies (a worker pinned with ``--study``); owners' loads still
            count all their studies.
    """
    query = _scan_query(
        connection.dialect.name,
        grace_period,
        limit=limit,
        max_running_per_owner=max_running_per_owner,
        names=None if names is None else frozenset(names),
    )
    order: list[StudyLoad] = []
    stale: list[StudyLoad] = []
    for row in connection.execute(query).all():
        load = StudyLoad(
            record_id=row.record_id,
            name=row.name,
            owner=row.owner,
            status=row.status,
            optuna_id=row.optuna_id,
            record=StudyRecord(**{key: getattr(row, key) for key in _RECORD}),
            running=row.running,
            finished=row.finished,
            waiting=row.waiting,
            stale=bool(row.stale),
            served_at=row.served_at,
            max_trials=row.trial_cap,
            weight=row.weight,
        )
        (order if row.place is not None else stale).append(load)
    listed = {load.record_id for load in order}  # a stale study in the order comes twice
    return Scan(order=order, stale=[load for load in stale if load.record_id not in listed])


def owner_loads(connection: Connection) -> list[OwnerLoad]:
    """Every owner with a running trial, whatever its study's status: what the order ranks
    owners by (an owner missing here has none)."""
    busy = _busy(func.now())
    query = (
        select(busy.c.owner, func.sum(busy.c.running), _weight())
        .outerjoin(OwnerRecord, OwnerRecord.owner == busy.c.owner)
        .group_by(busy.c.owner, OwnerRecord.weight)
    )
    return [
        OwnerLoad(owner, int(running), weight)
        for owner, running, weight in connection.execute(query)
    ]


@dataclass(frozen=True)
class Served:
    """What ``served`` counted as it stamped: None where not asked."""

    taken: int | None  # the study's finished and running trials: its budget's count
    owner_running: int | None  # the owner's running trials: a quota's count


def served(
    connection: Connection,
    record_id: int,
    *,
    optuna_id: int | None = None,
    owner: str | None = None,
) -> Served:
    """Stamp a study (and so its owner) served now, by the database's clock. The same
    statement counts, with ``optuna_id``, the study's finished and running trials (infeasible
    records left out), and with ``owner``, that owner's running trials: a claim's checks
    under its locks, which roll the stamp back to refuse."""
    # A light table: the ORM's ``updated_at`` says when the study itself last changed.
    hpo_studies = table("hpo_studies", column("id"), column("served_at"))
    stamp = update(hpo_studies).where(hpo_studies.c.id == record_id).values(served_at=func.now())
    taken = null() if optuna_id is None else _count(literal(optuna_id), *_TAKEN)
    running = null() if owner is None else owners.running_trials(owner)
    row = connection.execute(stamp.returning(taken, running)).one()
    return Served(taken=row[0], owner_running=row[1])


def _stale_before(dialect: str, grace_period: float) -> ColumnElement[Any]:
    """The database's clock ``grace_period`` seconds ago, comparable with Optuna's naive
    heartbeats (stored from ``CURRENT_TIMESTAMP``)."""
    if dialect == "sqlite":
        return func.datetime("now", f"-{grace_period} seconds")
    return func.now() - dt.timedelta(seconds=grace_period)


def _weight() -> ColumnElement[float]:
    """An owner's weight (the query joins ``OwnerRecord``)."""
    return func.coalesce(OwnerRecord.weight, DEFAULT_WEIGHT).label("weight")


def _busy(stale_before: ColumnElement[Any]) -> CTE:
    """Studies with running trials, whatever their status (they count against their owner):
    how many, and how many are stale."""
    beat = beats.c.heartbeat
    return (
        select(
            StudyRecord.id.label("record_id"),
            StudyRecord.name,
            StudyRecord.owner,
            StudyRecord.status,
            StudyRecord.served_at,
            StudyRecord.trial_cap,
            trials.c.study_id.label("optuna_id"),
            func.count().label("running"),
            func.count().filter(or_(beat.is_(None), beat < stale_before)).label("stale"),
        )
        .select_from(
            trials.join(optuna_studies, optuna_studies.c.study_id == trials.c.study_id)
            .join(StudyRecord, StudyRecord.name == optuna_studies.c.study_name)
            .outerjoin(beats, beats.c.trial_id == trials.c.trial_id)
        )
        .where(trials.c.state == "RUNNING")
        .group_by(StudyRecord.id, trials.c.study_id)
        .cte("busy")
    )


_TAKEN = ("COMPLETE", "PRUNED", "RUNNING")  # what a count budget counts (paused are PRUNED)


def _count(optuna_id: ColumnElement[int], *states: str) -> ScalarSelect[int]:
    """A study's trials in ``states``, infeasible records left out."""
    return (
        select(func.count())
        .select_from(trials)
        .where(
            trials.c.study_id == optuna_id,
            trials.c.state.in_(states),
            ~is_a_record(),
            ~is_yielded(),  # a yielded segment's continuation carries its configuration
        )
        .scalar_subquery()
    )


def _candidates(busy: CTE, *, limit: int, names: Collection[str] | None) -> Subquery:
    """Each owner's first ``limit`` running studies with nothing running (down the queue
    index: longest since served, then oldest), and the running studies with trials running
    and budget left (a few): every study that can reach the order's first ``limit``."""
    pinned = true() if names is None else StudyRecord.name.in_(list(names))
    idle = (
        select(
            StudyRecord.id,
            StudyRecord.owner,
            StudyRecord.served_at,
            literal(0, Integer).label("running"),
            func.row_number()
            .over(partition_by=StudyRecord.owner, order_by=(StudyRecord.served_at, StudyRecord.id))
            .label("rank"),
        )
        .where(
            StudyRecord.status == StudyStatus.RUNNING,
            StudyRecord.id.not_in(select(busy.c.record_id)),
            pinned,
        )
        .subquery("idle")
    )
    # A study with nothing running is worth a look even when spent: a worker settles it.
    finished = _count(busy.c.optuna_id, "COMPLETE", "PRUNED")
    with_room = select(busy.c.record_id, busy.c.owner, busy.c.served_at, busy.c.running).where(
        busy.c.status == StudyStatus.RUNNING,
        true() if names is None else busy.c.name.in_(list(names)),
        or_(busy.c.trial_cap.is_(None), finished + busy.c.running < busy.c.trial_cap),
    )
    return union_all(
        select(idle.c.id, idle.c.owner, idle.c.served_at, idle.c.running).where(
            idle.c.rank <= limit
        ),
        with_room,
    ).subquery("candidates")


def _placed(
    busy: CTE, candidates: Subquery, *, limit: int, max_running_per_owner: int | None
) -> Subquery:
    """The first ``limit`` candidates and their places: the n-th of every owner's queue before
    any (n+1)-th, owners by running trials per unit of weight, then by the longest since
    served (over all their studies, down ``ix_hpo_studies_owner_served``)."""
    owner = candidates.c.owner
    loads = (
        select(busy.c.owner, func.sum(busy.c.running).label("running"))
        .group_by(busy.c.owner)
        .subquery("owner_loads")
    )
    served = aliased(StudyRecord)
    owner_running = func.coalesce(loads.c.running, 0)
    turn = func.row_number().over(
        partition_by=owner,
        order_by=(candidates.c.running, candidates.c.served_at, candidates.c.id),
    )
    ranked = (
        select(
            candidates.c.id,
            owner,
            turn.label("turn"),
            owner_running.label("owner_running"),
            select(func.max(served.served_at))
            .where(served.owner == owner)
            .scalar_subquery()
            .label("owner_served"),
            _weight(),
        )
        .outerjoin(loads, loads.c.owner == owner)
        .outerjoin(OwnerRecord, OwnerRecord.owner == owner)
        .where(true() if max_running_per_owner is None else owner_running < max_running_per_owner)
        .subquery("ranked")
    )
    key = (
        ranked.c.turn,
        cast(ranked.c.owner_running, Float) / ranked.c.weight,
        ranked.c.owner_served,
        ranked.c.owner,
    )
    place = func.row_number().over(order_by=key).label("place")
    return select(ranked.c.id, place).order_by(*key).limit(limit).subquery("placed")


@functools.lru_cache(maxsize=64)
def _scan_query(
    dialect: str,
    grace_period: float,
    *,
    limit: int,
    max_running_per_owner: int | None,
    names: frozenset[str] | None,
) -> Select[Any]:
    """Built once per worker and page size: building it costs more than running it."""
    busy = _busy(_stale_before(dialect, grace_period))
    placed = _placed(
        busy,
        _candidates(busy, limit=limit, names=names),
        limit=limit,
        max_running_per_owner=max_running_per_owner,
    )
    targets = union_all(
        select(placed.c.id, placed.c.place),
        select(busy.c.record_id, null()).where(busy.c.stale > 0),
    ).subquery("targets")
    optuna_id = optuna_studies.c.study_id
    return (
        select(
            StudyRecord.id.label("record_id"),
            StudyRecord.name,
            StudyRecord.owner,
            StudyRecord.status,
            optuna_id.label("optuna_id"),
            func.coalesce(busy.c.running, 0).label("running"),
            _count(optuna_id, "COMPLETE", "PRUNED").label("finished"),
            _count(optuna_id, "WAITING").label("waiting"),
            (func.coalesce(busy.c.stale, 0) > 0).label("stale"),
            *(getattr(StudyRecord, key) for key in _RECORD if key not in _LOAD),
            StudyRecord.served_at,
            StudyRecord.trial_cap,
            _weight(),
            targets.c.place,
        )
        .select_from(targets)
        .join(StudyRecord, StudyRecord.id == targets.c.id)
        .join(optuna_studies, optuna_studies.c.study_name == StudyRecord.name)
        .outerjoin(busy, busy.c.record_id == StudyRecord.id)
        .outerjoin(OwnerRecord, OwnerRecord.owner == StudyRecord.owner)
        .order_by(targets.c.place)
    )
