"""Which study a worker serves next: owners first, then their studies, from one SQL scan.

``scan`` reads every running study's trial counts and its owner's weight in one statement
over our tables and Optuna's, whatever the number of studies: no per-study storage call.
``fair_order`` is a pure function of its rows: the owner with the fewest running trials per
unit of weight first (ties: the owner served longest ago), and within an owner the study with
the fewest running trials (ties: the one served longest ago, then the oldest). Owners take
turns down the list, so one owner's thousand studies sit behind every other owner's first.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, Subquery, func, or_, select

from hpo.core.db import OwnerRecord, StudyRecord, StudyStatus
from hpo.core.optuna_tables import studies as optuna_studies
from hpo.core.optuna_tables import trial_heartbeats as beats
from hpo.core.optuna_tables import trials
from hpo.core.owners import DEFAULT_WEIGHT
from hpo.core.progress import is_a_record, is_yielded

_NEVER = dt.datetime.min


@dataclass(frozen=True)
class StudyLoad:
    """One study as the scan sees it. ``max_trials`` is None for a study with a scheduler,
    whose next work only its scheduler knows."""

    record_id: int
    name: str
    owner: str
    status: str
    optuna_id: int
    running: int = 0
    finished: int = 0
    waiting: int = 0
    stale: bool = False
    last_start: dt.datetime | None = None
    max_trials: int | None = 20
    weight: float = DEFAULT_WEIGHT

    @property
    def may_have_work(self) -> bool:
        """Worth a closer look: budget left by count, a scheduler's say, or nothing running
        (then a worker settles a spent study's status)."""
        if self.status != StudyStatus.RUNNING:
            return False
        if self.max_trials is None or self.running == 0:
            return True
        return self.finished + self.running < self.max_trials


def scan(connection: Connection, *, grace_period: float) -> list[StudyLoad]:
    """Every running study, and every study with a running trial (they count against their
    owner), with trial counts, in one statement.

    ``stale``: a RUNNING trial has no heartbeat, or none within ``grace_period`` seconds by
    the database's clock (as Optuna's own check), so a sweep is due before counts are exact.
    """
    grace = dt.timedelta(seconds=grace_period)
    loads = []
    for row in connection.execute(_scan_query()).all():
        # Optuna compares naive heartbeats with the database's clock the same way.
        stale = row.unbeaten > 0 or (
            row.oldest_beat is not None and row.now.replace(tzinfo=None) - row.oldest_beat > grace
        )
        loads.append(
            StudyLoad(
                record_id=row.record_id,
                name=row.name,
                owner=row.owner,
                status=row.status,
                optuna_id=row.optuna_id,
                running=row.running,
                finished=row.finished,
                waiting=row.waiting,
                stale=stale,
                last_start=row.last_start,
                max_trials=row.trial_cap,
                weight=row.weight,
            )
        )
    return loads


def _per_study_counts() -> Subquery:
    """Trial counts and heartbeats per study, for running studies and running trials."""
    is_running = trials.c.state == "RUNNING"
    running_studies = (
        select(optuna_studies.c.study_id)
        .join(StudyRecord, StudyRecord.name == optuna_studies.c.study_name)
        .where(StudyRecord.status == StudyStatus.RUNNING)
    )
    return (
        select(
            trials.c.study_id,
            func.count().filter(is_running).label("running"),
            func.count()
            .filter(trials.c.state.in_(("COMPLETE", "PRUNED")), ~is_a_record(), ~is_yielded())
            .label("finished"),
            func.count().filter(trials.c.state == "WAITING").label("waiting"),
            func.count().filter(is_running, beats.c.heartbeat.is_(None)).label("unbeaten"),
            func.min(beats.c.heartbeat).filter(is_running).label("oldest_beat"),
            func.max(trials.c.datetime_start).label("last_start"),
        )
        .select_from(trials.outerjoin(beats, beats.c.trial_id == trials.c.trial_id))
        .where(or_(trials.c.study_id.in_(running_studies), is_running))
        .group_by(trials.c.study_id)
        .subquery()
    )


def _scan_query() -> Select[Any]:
    per_study = _per_study_counts()
    return (
        select(
            StudyRecord.id.label("record_id"),
            StudyRecord.name,
            StudyRecord.owner,
            StudyRecord.status,
            optuna_studies.c.study_id.label("optuna_id"),
            func.coalesce(per_study.c.running, 0).label("running"),
            func.coalesce(per_study.c.finished, 0).label("finished"),
            func.coalesce(per_study.c.waiting, 0).label("waiting"),
            func.coalesce(per_study.c.unbeaten, 0).label("unbeaten"),
            per_study.c.oldest_beat,
            per_study.c.last_start,
            StudyRecord.trial_cap,
            func.coalesce(OwnerRecord.weight, DEFAULT_WEIGHT).label("weight"),
            func.now().label("now"),
        )
        .join(optuna_studies, optuna_studies.c.study_name == StudyRecord.name)
        .outerjoin(per_study, per_study.c.study_id == optuna_studies.c.study_id)
        .outerjoin(OwnerRecord, OwnerRecord.owner == StudyRecord.owner)
        .where(or_(StudyRecord.status == StudyStatus.RUNNING, per_study.c.running > 0))
    )


def fair_order(
    loads: Sequence[StudyLoad],
    *,
    max_running_per_owner: int | None = None,
    names: Collection[str] | None = None,
) -> list[StudyLoad]:
    """The studies a worker should try, best first.

    Args:
        loads: A scan's rows; every row counts against its owner's running trials, but only
            running studies that may have work are returned.
        max_running_per_owner: Owners with this many running trials are left out.
        names: Only these studies (a worker pinned with ``--study``); owners' loads still
            count all their studies.
    """
    running: defaultdict[str, int] = defaultdict(int)
    served: defaultdict[str, dt.datetime] = defaultdict(lambda: _NEVER)
    weight: dict[str, float] = {}
    by_owner: defaultdict[str, list[StudyLoad]] = defaultdict(list)
    for load in loads:
        running[load.owner] += load.running
        served[load.owner] = max(served[load.owner], load.last_start or _NEVER)
        weight[load.owner] = load.weight
        if load.may_have_work and (names is None or load.name in names):
            by_owner[load.owner].append(load)
    owners = sorted(
        (
            o
            for o in by_owner
            if max_running_per_owner is None or running[o] < max_running_per_owner
        ),
        key=lambda o: (running[o] / weight[o], served[o], o),
    )
    # Round robin down the owners' queues: each owner's best, then each owner's second, ...
    turns: list[tuple[tuple[int, int], StudyLoad]] = []
    for rank, owner in enumerate(owners):
        queue = sorted(
            by_owner[owner], key=lambda s: (s.running, s.last_start or _NEVER, s.record_id)
        )
        turns.extend(((turn, rank), load) for turn, load in enumerate(queue))
    turns.sort(key=lambda t: t[0])
    return [load for _, load in turns]
