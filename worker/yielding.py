"""Whether a running segment gives its worker up at a report (``hpo.core.fleet``).

Asked at each report of a segment that can pause: a study paused or stopped lets its trials
go at once; a trial past its minimum slice yields when the fleet is full (no free worker),
another owner below their weighted share waits, and it is the chosen trial of the owner most
over theirs. One query on its study's row per report; the fleet's only once the slice is run.
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, Engine, select

from hpo.core import fairshare, fleet
from hpo.core.db import StudyRecord, StudyStatus
from hpo.core.fairshare import StudyLoad
from hpo.core.settings import Settings

PREEMPTED = "preempted: the fleet is full and another owner below their fair share waits"


class YieldCheck:
    """Called, it is the reason the segment yields now, or None."""

    def __init__(
        self, engine: Engine, settings: Settings, *, record: StudyRecord, trial_id: int
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.record_id, self.owner = record.id, record.owner
        self.trial_id = trial_id
        self.started = time.monotonic()

    def __call__(self) -> str | None:
        with self.engine.connect() as conn:
            status = conn.scalar(
                select(StudyRecord.status).where(StudyRecord.id == self.record_id)
            )
            if status in (StudyStatus.PAUSED, StudyStatus.STOPPED):
                return f"its study was {status}"
            if time.monotonic() - self.started < self.settings.min_slice_s:
                return None
            live = fleet.live(conn)
            if live.free > 0:
                return None  # a free worker serves whoever waits
            waiting, running = _demand(conn, self.settings, workers=live.running)
            if fleet.yielding_owner(waiting, running) != self.owner:
                return None
            chosen = fleet.victim(conn, owner=self.owner, min_slice_s=self.settings.min_slice_s)
        return PREEMPTED if chosen == self.trial_id else None


def _demand(
    conn: Connection, settings: Settings, *, workers: int
) -> tuple[StudyLoad | None, dict[str, tuple[int, float]]]:
    """The study a free worker would serve next, and every owner's running trials and weight
    (``workers``: the fleet, every worker busy)."""
    running = {o.owner: (o.running, o.weight) for o in fairshare.owner_loads(conn)}
    cap = settings.max_running_trials_per_owner or fleet.owner_cap(
        workers, share=settings.max_fleet_share
    )
    order = fairshare.scan(
        conn, grace_period=settings.grace_period, max_running_per_owner=cap
    ).order
    return next((load for load in order if fleet.has_work(load)), None), running
