"""Who gives a worker up when the fleet is full, and how many running trials one owner may
hold: pure functions of the workers' scan (``hpo.core.fleet``)."""

from __future__ import annotations

from hpo.core.fleet import owner_cap, yielding_owner
from tests.unit.test_fairshare import load


def test_the_owner_holding_the_fleet_gives_a_worker_to_a_waiting_owner() -> None:
    loads = [load("holder", running=2), load("later")]
    assert yielding_owner(loads, max_running_per_owner=None) == "holder"


def test_no_one_yields_when_a_move_would_only_swap_who_is_ahead() -> None:
    """1 + 1 running: moving a worker would leave the waiting owner ahead of the giver."""
    assert (
        yielding_owner([load("a", running=1), load("b", running=1)], max_running_per_owner=None)
        is None
    )
    # 3 workers, 2 + 1: the owner with one is not below their share of 1.5 by a whole worker.
    assert (
        yielding_owner([load("a", running=2), load("b", running=1)], max_running_per_owner=None)
        is None
    )


def test_weights_set_the_share_a_waiting_owner_may_reclaim() -> None:
    heavy = [load("team", running=2, weight=3.0), load("solo", running=2)]
    assert yielding_owner(heavy, max_running_per_owner=None) == "solo"
    assert (
        yielding_owner(
            [load("team", running=3, weight=3.0), load("solo", running=1)],
            max_running_per_owner=None,
        )
        is None
    )


def test_the_most_over_share_owner_gives_the_worker() -> None:
    loads = [load("a", running=3), load("b", running=2), load("c")]
    assert yielding_owner(loads, max_running_per_owner=None) == "a"


def test_nothing_to_start_means_no_yield() -> None:
    spent = load("later", finished=1, max_trials=1)  # nothing running, nothing left to start
    paused = load("other", status="paused")
    assert (
        yielding_owner([load("holder", running=2), spent, paused], max_running_per_owner=None)
        is None
    )


def test_an_owner_at_their_cap_is_not_waiting() -> None:
    loads = [load("holder", running=3), load("capped", running=1), load("capped")]
    assert yielding_owner(loads, max_running_per_owner=1) is None
    assert yielding_owner(loads, max_running_per_owner=3) == "holder"


def test_the_holders_own_queued_work_does_not_preempt_the_holder() -> None:
    assert (
        yielding_owner([load("holder", running=2), load("holder")], max_running_per_owner=None)
        is None
    )


def test_an_owner_may_hold_a_share_of_the_live_fleet() -> None:
    loads = [load("a", running=6), load("b", running=3)]
    assert owner_cap(loads, free=1, share=0.9) == 9  # 10 workers
    assert owner_cap(loads, free=1, share=1.0) == 10
    assert owner_cap([], free=1, share=0.9) == 1  # a lone worker still serves someone
    assert owner_cap([load("a", running=1)], free=1, share=0.9) == 2  # ceil(1.8)
