"""The live fleet: which workers are free, how many running trials one owner may hold, and
whose trial gives its worker up when the fleet is full and another owner waits.

Busy workers are their running trials; an idle worker says so each time it polls and finds no
work (``seen_idle``), so a row fresh within a few of its polls is a free worker. Fine-tunes run
for hours, so a fleet is usually full: a free worker serves the waiting owner by itself
(``hpo.core.fairshare``), and without one the owner most over their weighted share yields one
trial at its next report (``victim``); the trial pauses with its state kept and continues
later, so a yield costs no training.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, delete, exists, func, select
from sqlalchemy.dialects import postgresql, sqlite

from hpo.core.db import StudyRecord, StudyStatus, WorkerRecord, utcnow
from hpo.core.fairshare import StudyLoad
from hpo.core.optuna_tables import studies as optuna_studies
from hpo.core.optuna_tables import trial_intermediate_values as reports
from hpo.core.optuna_tables import trials

# An idle worker is free while its last poll is at most this many polls old (plus a second of
# clock skew between hosts): one that found work stops polling and drops out in two polls.
FREE_POLLS = 2.0
SKEW_S = 1.0


def seen_idle(conn: Connection, *, worker_id: str, hostname: str, poll_s: float) -> None:
    """Note that the worker polled and found no work (one upsert): it counts as free until
    it has missed ``FREE_POLLS`` polls."""
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(
        WorkerRecord
    )
    free_until = utcnow() + dt.timedelta(seconds=FREE_POLLS * poll_s + SKEW_S)
    conn.execute(
        insert.values(
            worker_id=worker_id, hostname=hostname, free_until=free_until
        ).on_conflict_do_update(
            index_elements=[WorkerRecord.worker_id], set_={"free_until": free_until}
        )
    )


def gone(conn: Connection, *, worker_id: str) -> None:
    """The worker took a trial, or left: it is no longer a free worker."""
    conn.execute(delete(WorkerRecord).where(WorkerRecord.worker_id == worker_id))


@dataclass(frozen=True)
class Fleet:
    """The live fleet as one statement sees it: running trials (busy workers) and free
    workers."""

    running: int
    free: int


def live(conn: Connection, *, besides: str | None = None) -> Fleet:
    """The fleet now; ``besides``: a worker not to count as free (the one asking)."""
    free = (
        select(func.count()).select_from(WorkerRecord).where(WorkerRecord.free_until >= utcnow())
    )
    if besides is not None:
        free = free.where(WorkerRecord.worker_id != besides)
    running = select(func.count()).select_from(trials).where(trials.c.state == "RUNNING")
    row = conn.execute(select(running.scalar_subquery(), free.scalar_subquery())).one()
    return Fleet(running=int(row[0]), free=int(row[1]))


def owner_cap(workers: int, *, share: float) -> int:
    """The running trials one owner may hold: ``share`` of ``workers``, rounded up, at least
    one."""
    return max(1, math.ceil(share * workers))


def has_work(load: StudyLoad) -> bool:
    """A trial to start now (a spent study with nothing running is worth a worker's look, to
    settle it, but not a preemption)."""
    if load.status != StudyStatus.RUNNING:
        return False
    return load.max_trials is None or load.finished + load.running < load.max_trials


def yielding_owner(
    waiting: StudyLoad | None, running: Mapping[str, tuple[int, float]]
) -> str | None:
    """The owner who should give a worker up, or None.

    Args:
        waiting: The study a free worker would serve next (the head of the fair order with a
            trial to start), if any.
        running: Owners with running trials: (running trials, weight).

    The giver is the owner with the most running trials per unit of weight. A worker moves
    only while the move leaves the waiting owner no better off than the giver
    (``(r_w + 1) / w_w <= (r_g - 1) / w_g``), so two owners never trade a worker back and
    forth.
    """
    if waiting is None:
        return None
    givers = {o: load for o, load in running.items() if load[0] > 0 and o != waiting.owner}
    if not givers:
        return None
    giver = max(givers, key=lambda o: (givers[o][0] / givers[o][1], o))
    given, giver_weight = givers[giver]
    taken = running.get(waiting.owner, (0, waiting.weight))[0]
    return giver if (taken + 1) / waiting.weight <= (given - 1) / giver_weight else None


def victim(conn: Connection, *, owner: str, min_slice_s: float) -> int | None:
    """The giver's trial that yields: one that has run its minimum slice, preferring one that
    has reported (it can pause at its next report), then the longest running."""
    # Optuna stores naive UTC times.
    cutoff = (utcnow() - dt.timedelta(seconds=min_slice_s)).replace(tzinfo=None)
    reported = exists().where(reports.c.trial_id == trials.c.trial_id)
    return conn.scalar(
        select(trials.c.trial_id)
        .join(optuna_studies, optuna_studies.c.study_id == trials.c.study_id)
        .join(StudyRecord, StudyRecord.name == optuna_studies.c.study_name)
        .where(
            StudyRecord.owner == owner,
            trials.c.state == "RUNNING",
            trials.c.datetime_start <= cutoff,
        )
        .order_by(reported.desc(), trials.c.datetime_start, trials.c.trial_id)
        .limit(1)
    )
