"""The workers' fair order, as SQL on PostgreSQL and SQLite: owners by running trials per unit
of weight, then their studies; the stale studies; each owner's last service."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial
from sqlalchemy import text

from hpo.core import fairshare
from hpo.core.db import NEVER_SERVED, Database, OwnerRecord, StudyRecord
from hpo.core.fairshare import StudyLoad
from tests.specs import minimal_spec

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
EVERY = 10_000  # a limit past every test's studies: the whole order


class Fleet:
    """Studies written straight into our tables and Optuna's, as workers would leave them."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.storage = RDBStorage(url)

    def study(
        self,
        owner: str,
        name: str,
        *,
        running: int = 0,
        finished: int = 0,
        served: dt.datetime = NEVER_SERVED,
        status: str = "running",
        cap: int | None = 10,
    ) -> int:
        study_id = self.storage.create_new_study([StudyDirection.MINIMIZE], name)
        with self.db.session() as session:
            session.add(
                StudyRecord(
                    name=name,
                    owner=owner,
                    spec=minimal_spec(name),
                    status=status,
                    trial_cap=cap,
                    served_at=served,
                )
            )
            session.commit()
        for _ in range(finished):
            done = create_trial(
                state=TrialState.COMPLETE,
                value=1.0,
                params={"x": 0.5},
                distributions={"x": FloatDistribution(0, 1)},
            )
            self.storage.create_new_trial(study_id, template_trial=done)
        for _ in range(running):
            self.storage.record_heartbeat(self.storage.create_new_trial(study_id))
        return study_id

    def weight(self, owner: str, weight: float) -> None:
        with self.db.session() as session:
            session.add(OwnerRecord(owner=owner, weight=weight))
            session.commit()

    def scan(self, **kwargs: Any) -> fairshare.Scan:
        with self.db.engine.connect() as conn:
            return fairshare.scan(conn, **{"grace_period": 3600, **kwargs})

    def order(self, **kwargs: Any) -> list[str]:
        return names(self.scan(**{"limit": EVERY, **kwargs}).order)


def names(loads: list[StudyLoad]) -> list[str]:
    return [load.name for load in loads]


@pytest.fixture
def fleet(database_url: str) -> Iterator[Fleet]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fleet = Fleet(database_url)
    yield fleet
    fleet.storage.engine.dispose()
    fleet.db.engine.dispose()


def test_another_owners_study_comes_second_behind_a_crowd(fleet: Fleet) -> None:
    for i in range(300):
        fleet.study("mallory", f"crowd-{i}")
    fleet.study("alice", "alone")
    assert len(fleet.order()) == 301
    head = fleet.scan().order  # a worker's first look: the order's head only
    assert len(head) == fairshare.FIRST_PAGE
    assert "alone" in names(head[:2])


def test_the_owner_with_fewer_running_trials_goes_first(fleet: Fleet) -> None:
    fleet.study("bob", "busy", running=2)
    fleet.study("alice", "idle")
    assert fleet.order()[0] == "idle"


def test_running_trials_of_a_study_without_new_ones_count_against_its_owner(
    fleet: Fleet,
) -> None:
    fleet.study("bob", "free")
    fleet.study("bob", "paused", status="paused", running=3)
    fleet.study("carol", "carols", running=1)
    assert fleet.order() == ["carols", "free"]


def test_a_weight_scales_the_share(fleet: Fleet) -> None:
    fleet.study("big", "big-busy", running=3)
    fleet.study("big", "big-next")
    fleet.study("small", "small-busy", running=1)
    fleet.study("small", "small-next")
    assert fleet.order()[:2] == ["small-next", "big-next"]
    # 3 running / weight 4 < 1 running / weight 1: the heavier owner goes first.
    fleet.weight("big", 4.0)
    assert fleet.order()[:2] == ["big-next", "small-next"]


def test_ties_go_to_the_owner_served_longest_ago(fleet: Fleet) -> None:
    fleet.study("bob", "recent", served=T0 + dt.timedelta(minutes=5))
    fleet.study("alice", "earlier", served=T0)
    fleet.study("carol", "never")
    assert fleet.order() == ["never", "earlier", "recent"]


def test_within_an_owner_ties_go_to_the_study_served_longest_ago_then_the_oldest(
    fleet: Fleet,
) -> None:
    fleet.study("dave", "old")
    fleet.study("dave", "new")
    fleet.study("erin", "served", served=T0)
    fleet.study("erin", "waiting")
    order = fleet.order()
    assert order.index("old") < order.index("new")  # never served: the oldest first
    assert order.index("waiting") < order.index("served")


def test_within_an_owner_the_study_with_fewer_running_trials_first(fleet: Fleet) -> None:
    fleet.study("alice", "a", running=2)
    fleet.study("alice", "b", served=T0 + dt.timedelta(days=1))
    assert fleet.order() == ["b", "a"]


def test_owners_take_turns_down_their_queues(fleet: Fleet) -> None:
    for i in range(3):
        fleet.study("x", f"x{i}")
    for i in range(2):
        fleet.study("y", f"y{i}")
    assert fleet.order() == ["x0", "y0", "x1", "y1", "x2"]
    # The head of the order is the order's head, whatever the limit.
    assert fleet.order(limit=3) == ["x0", "y0", "x1"]


def test_an_owner_at_the_running_quota_is_left_out(fleet: Fleet) -> None:
    fleet.study("bob", "b1", running=2)
    fleet.study("bob", "b2")
    fleet.study("alice", "a1", running=5)
    assert fleet.order(max_running_per_owner=3) == ["b2", "b1"]
    assert fleet.order(max_running_per_owner=2) == []


def test_only_studies_that_may_have_work_and_the_pinned_ones(fleet: Fleet) -> None:
    fleet.study("bob", "full", running=2, finished=8)
    fleet.study("bob", "spent", finished=10)  # nothing runs: a worker completes it
    fleet.study("bob", "asha", running=5, finished=40, cap=None)
    fleet.study("bob", "stopped", status="stopped")
    assert fleet.order() == ["spent", "asha"]
    fleet.study("alice", "mine")
    assert fleet.order(names={"mine"}) == ["mine"]
    [asha] = [load for load in fleet.scan(limit=EVERY).order if load.name == "asha"]
    assert (asha.running, asha.finished, asha.max_trials) == (5, 40, None)


def test_stale_studies_are_named_wherever_they_sit(fleet: Fleet) -> None:
    """A running trial with no heartbeat, or one past the grace period, makes its study
    stale, in the order's head or not, running or stopped."""
    for i in range(5):
        fleet.study("alice", f"fresh-{i}", running=1)
    lost = fleet.study("bob", "lost", status="stopped")
    fleet.storage.create_new_trial(lost)  # RUNNING, never beat
    fleet.study("carol", "late", running=1)
    sqlite = fleet.db.engine.dialect.name == "sqlite"
    earlier = "datetime(heartbeat, '-2 hours')" if sqlite else "heartbeat - interval '2 hours'"
    with fleet.db.engine.begin() as conn:
        conn.execute(
            text(
                f"UPDATE trial_heartbeats SET heartbeat = {earlier} "
                "WHERE trial_id = (SELECT max(trial_id) FROM trials)"
            )
        )
    found = fleet.scan(limit=1)
    assert names(found.order) == ["late"]  # carol has 1 trial running, alice 5
    assert found.order[0].stale
    assert sorted(names(found.swept())) == ["late", "lost"]
    assert names(fleet.scan(grace_period=3 * 3600, limit=EVERY).swept()) == ["lost"]


def test_a_served_study_goes_behind_its_owners_others_and_its_owner_behind_others(
    fleet: Fleet,
) -> None:
    fleet.study("alice", "a0")
    fleet.study("alice", "a1")
    fleet.study("bob", "b0")
    assert fleet.order() == ["a0", "b0", "a1"]  # never served: by name, then the oldest
    with fleet.db.engine.begin() as conn:
        served = conn.execute(text("SELECT id FROM hpo_studies WHERE name = 'a0'")).scalar_one()
        fairshare.served(conn, served)
    assert fleet.order() == ["b0", "a1", "a0"]


def test_owner_loads_count_every_running_trial(fleet: Fleet) -> None:
    fleet.study("bob", "paused", status="paused", running=2)
    fleet.study("bob", "on", running=1)
    fleet.study("alice", "idle")
    fleet.weight("bob", 2.0)
    with fleet.db.engine.connect() as conn:
        loads = fairshare.owner_loads(conn)
    assert [(load.owner, load.running, load.weight) for load in loads] == [("bob", 3, 2.0)]
