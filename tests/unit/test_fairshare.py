"""The workers' fair order: owners by running trials per unit of weight, then their studies."""

from __future__ import annotations

import datetime as dt
from itertools import count
from typing import Any

from hpo.core.fairshare import StudyLoad, fair_order

_ids = count(1)
T0 = dt.datetime(2026, 12, 1)


def load(owner: str, name: str | None = None, **fields: Any) -> StudyLoad:
    record_id = next(_ids)
    defaults: dict[str, Any] = {"status": "running", "optuna_id": record_id, "max_trials": 10}
    return StudyLoad(
        record_id=record_id,
        name=name or f"{owner}-{record_id}",
        owner=owner,
        **{**defaults, **fields},
    )


def names(loads: list[StudyLoad]) -> list[str]:
    return [s.name for s in loads]


def test_another_owners_study_comes_second_behind_a_thousand() -> None:
    crowd = [load("mallory") for _ in range(1000)]
    alone = load("alice", "alone")
    order = fair_order([*crowd, alone])
    assert len(order) == 1001
    assert "alone" in names(order[:2])


def test_the_owner_with_fewer_running_trials_goes_first() -> None:
    busy = load("bob", "busy", running=2)
    idle = load("alice", "idle")
    assert names(fair_order([busy, idle]))[0] == "idle"
    # Running trials of a study that takes no new ones still count against the owner.
    bobs = [load("bob", "free"), load("bob", "paused", status="paused", running=3)]
    carols = [load("carol", "carols", running=1)]
    assert names(fair_order([*bobs, *carols])) == ["carols", "free"]


def test_a_weight_scales_the_share() -> None:
    heavy = [load("big", running=3, weight=4.0), load("big", "big-next", weight=4.0)]
    light = [load("small", "small-next", running=1)]
    # 3 running / weight 4 < 1 running / weight 1: the heavier owner goes first.
    assert names(fair_order([*heavy, *light]))[0] == "big-next"
    assert names(fair_order([*heavy, *light]))[1] == "small-next"
    unweighted = [load("big", running=3), load("big", "big-plain")]
    assert names(fair_order([*unweighted, *light]))[0] == "small-next"


def test_ties_go_to_the_owner_and_study_served_longest_ago() -> None:
    recent = load("bob", "recent", last_start=T0 + dt.timedelta(minutes=5))
    earlier = load("alice", "earlier", last_start=T0)
    never = load("carol", "never")
    assert names(fair_order([recent, earlier, never])) == ["never", "earlier", "recent"]
    old, new = load("dave", "old"), load("dave", "new")
    assert names(fair_order([new, old])) == ["old", "new"]  # never served: the oldest first
    served = load("erin", "served", last_start=T0)
    waiting = load("erin", "waiting")
    assert names(fair_order([served, waiting])) == ["waiting", "served"]


def test_within_an_owner_the_study_with_fewer_running_trials_first() -> None:
    a = load("alice", "a", running=2)
    b = load("alice", "b", running=0, last_start=T0)
    assert names(fair_order([a, b])) == ["b", "a"]


def test_owners_take_turns_down_their_queues() -> None:
    loads = [load("x", f"x{i}") for i in range(3)] + [load("y", f"y{i}") for i in range(2)]
    assert names(fair_order(loads)) == ["x0", "y0", "x1", "y1", "x2"]


def test_an_owner_at_the_running_quota_is_skipped() -> None:
    loads = [load("bob", "b1", running=2), load("bob", "b2"), load("alice", "a1", running=5)]
    assert names(fair_order(loads, max_running_per_owner=3)) == ["b2", "b1"]
    assert names(fair_order(loads, max_running_per_owner=2)) == []


def test_only_studies_that_may_have_work_and_the_pinned_ones() -> None:
    full = load("bob", "full", running=2, finished=8)
    settled = load("bob", "spent", finished=10)  # nothing runs: a worker completes it
    scheduled = load("bob", "asha", running=5, finished=40, max_trials=None)
    stopped = load("bob", "stopped", status="stopped")
    assert names(fair_order([full, settled, scheduled, stopped])) == ["spent", "asha"]
    other = load("alice", "mine")
    assert names(fair_order([full, settled, other], names={"mine"})) == ["mine"]
