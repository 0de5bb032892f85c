"""Who gives a worker up when the fleet is full, and how many running trials one owner may
hold: pure functions (``hpo.core.fleet``)."""

from __future__ import annotations

from typing import Any

from hpo.core.db import StudyRecord
from hpo.core.fairshare import StudyLoad
from hpo.core.fleet import has_work, owner_cap, yielding_owner


def study(owner: str, **fields: Any) -> StudyLoad:
    defaults: dict[str, Any] = {"status": "running", "optuna_id": 1, "max_trials": 10}
    fields = {**defaults, **fields}
    name = f"{owner}-study"
    record = StudyRecord(id=1, name=name, owner=owner, status=fields["status"], spec={})
    return StudyLoad(record_id=1, name=name, owner=owner, record=record, **fields)


def test_the_owner_holding_the_fleet_gives_a_worker_to_a_waiting_owner() -> None:
    assert yielding_owner(study("later"), {"holder": (2, 1.0)}) == "holder"


def test_no_one_yields_when_a_move_would_only_swap_who_is_ahead() -> None:
    """1 + 1 running: the waiting owner would end up ahead of the giver."""
    assert yielding_owner(study("b"), {"a": (1, 1.0), "b": (1, 1.0)}) is None
    # 3 workers, 2 + 1: the owner with one is not below their share of 1.5 by a whole worker.
    assert yielding_owner(study("b"), {"a": (2, 1.0), "b": (1, 1.0)}) is None


def test_weights_set_the_share_a_waiting_owner_may_reclaim() -> None:
    team = study("team", weight=3.0)
    assert yielding_owner(team, {"team": (2, 3.0), "solo": (2, 1.0)}) == "solo"
    assert yielding_owner(team, {"team": (3, 3.0), "solo": (1, 1.0)}) is None


def test_the_most_over_share_owner_gives_the_worker() -> None:
    assert yielding_owner(study("c"), {"a": (3, 1.0), "b": (2, 1.0)}) == "a"
    assert yielding_owner(study("c"), {"a": (3, 2.0), "b": (2, 1.0)}) == "b"  # 1.5 < 2


def test_no_waiting_study_or_only_the_holders_own_work_means_no_yield() -> None:
    assert yielding_owner(None, {"holder": (2, 1.0)}) is None
    assert yielding_owner(study("holder"), {"holder": (2, 1.0)}) is None


def test_a_spent_or_stopped_study_has_no_trial_to_start() -> None:
    assert has_work(study("a", finished=3, running=1, max_trials=5))
    assert not has_work(study("a", finished=4, running=1, max_trials=5))
    assert not has_work(study("a", status="paused"))
    assert has_work(study("a", max_trials=None, running=7))  # a scheduler decides


def test_an_owner_may_hold_a_share_of_the_live_fleet() -> None:
    assert owner_cap(10, share=0.9) == 9
    assert owner_cap(10, share=1.0) == 10
    assert owner_cap(2, share=0.9) == 2
    assert owner_cap(0, share=0.9) == 1  # a lone worker still serves someone
