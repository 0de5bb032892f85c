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
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import Connection, delete, exists, select
from sqlalchemy.dialects import postgresql, sqlite

from hpo.core.db import StudyRecord, WorkerRecord, utcnow
from hpo.core.fairshare import StudyLoad, fair_order
from hpo.core.optuna_tables import studies as optuna_studies
from hpo.core.optuna_tables import trial_intermediate_values as reports
from hpo.core.optuna_tables import trials

# An idle worker is free while its last poll is at most this many polls old (plus a second of
# clock skew between hosts): one that found work stops polling and drops out in two polls.
FREE_POLLS = 2.0
SKEW_S = 1.0


def seen_idle(conn: Connection, *, worker_id: str, hostname: str, poll_s: float) -> None:
    """Note that the worker polled and found no work (one upsert)."""
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(
        WorkerRecord
    )
    now = utcnow()
    conn.execute(
        insert.values(
            worker_id=worker_id, hostname=hostname, poll_s=poll_s, idle_at=now
        ).on_conflict_do_update(
            index_elements=[WorkerRecord.worker_id], set_={"idle_at": now, "poll_s": poll_s}
        )
    )


def gone(conn: Connection, *, worker_id: str) -> None:
    """The worker left: it is no longer a free worker."""
    conn.execute(delete(WorkerRecord).where(WorkerRecord.worker_id == worker_id))


def free_workers(conn: Connection, *, besides: str | None = None) -> int:
    """Workers whose last idle poll is recent: they will serve a waiting owner by themselves.
    ``besides``: a worker not to count (the one asking)."""
    now = utcnow()
    # poll_s is per worker; the index narrows to the last minute's polls before that test.
    recent = now - dt.timedelta(minutes=1)
    query = select(WorkerRecord.idle_at, WorkerRecord.poll_s).where(WorkerRecord.idle_at >= recent)
    if besides is not None:
        query = query.where(WorkerRecord.worker_id != besides)
    rows = conn.execute(query).all()
    return sum(
        1
        for idle_at, poll_s in rows
        if (now - _aware(idle_at)).total_seconds() <= FREE_POLLS * poll_s + SKEW_S
    )


def _aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def owner_cap(loads: Sequence[StudyLoad], *, free: int, share: float) -> int:
    """The running trials one owner may hold: ``share`` of the live fleet (running trials and
    free workers), at least one."""
    fleet = sum(load.running for load in loads) + free
    return max(1, math.ceil(share * fleet))


def _waiting(load: StudyLoad) -> bool:
    """Has a trial to start now (a spent study with nothing running is not waiting)."""
    if not load.may_have_work:
        return False
    return load.max_trials is None or load.finished + load.running < load.max_trials


def yielding_owner(loads: Sequence[StudyLoad], *, max_running_per_owner: int | None) -> str | None:
    """The owner who should give a worker up, or None.

    The waiting owner is the one a free worker would serve next; the giver is the owner with
    the most running trials per unit of weight. A worker moves only while the move leaves the
    waiting owner no better off than the giver (``(r_w + 1) / w_w <= (r_g - 1) / w_g``), so
    two owners never trade a worker back and forth.
    """
    order = fair_order(
        [load for load in loads if _waiting(load) or load.running > 0],
        max_running_per_owner=max_running_per_owner,
    )
    waiting = next((load.owner for load in order if _waiting(load)), None)
    if waiting is None:
        return None
    running: defaultdict[str, int] = defaultdict(int)
    weight: dict[str, float] = {}
    for load in loads:
        running[load.owner] += load.running
        weight[load.owner] = load.weight
    givers = [owner for owner, n in running.items() if n > 0 and owner != waiting]
    if not givers:
        return None
    giver = max(givers, key=lambda owner: (running[owner] / weight[owner], owner))
    moved_to = (running[waiting] + 1) / weight[waiting]
    return giver if moved_to <= (running[giver] - 1) / weight[giver] else None


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
