"""A full fleet belongs to no one: one owner's endless trials hold both workers, a later owner
still gets a worker at the holder's next report, and the holder loses nothing.

Real API on PostgreSQL, two real ``hpo worker`` processes training the tiny model. The
holder's trials would train for 100,000 steps; only their time limit (``max_trial_s``) ends
them, so without preemption the later owner waits for that limit.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from optuna.trial import FrozenTrial, TrialState

from hpo.core import records
from tests.conftest import ApiServer
from tests.workers import small_study, trials, wait_until

Spawn = Callable[..., subprocess.Popen[bytes]]
FIXED = {"learning_rate": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True}}
ENDLESS = {"max_steps": 100_000, "max_seq_length": 32}


def _study(client: Any, name: str) -> dict[str, Any]:
    response = client.get(f"/studies/{name}")
    assert response.status_code == 200, response.text
    return response.json()


def _reporting(settings: Any, name: str) -> list[FrozenTrial]:
    return [
        t
        for t in trials(settings, name)
        if t.state == TrialState.RUNNING and t.intermediate_values
    ]


@pytest.mark.slow
def test_a_later_owner_gets_a_worker_from_a_full_fleet(
    pg_api: ApiServer, spawn_worker: Spawn
) -> None:
    settings = pg_api.settings
    hold = small_study(
        "hold",
        space=FIXED,
        training=ENDLESS,
        pruner={"type": "none"},
        budget={"max_trials": 2, "max_trial_s": 45},
        evaluation={"every_examples": 64},
    )
    quick = small_study("quick", pruner={"type": "none"}, budget={"max_trials": 1})
    with pg_api.client("holder") as holder, pg_api.client("later") as later:
        assert holder.post("/studies", json=hold).status_code == 201
        for name in ("w1", "w2"):
            spawn_worker(settings, name, HPO_MIN_SLICE_S="1")
        wait_until(
            lambda: len(_reporting(settings, "hold")) == 2,
            timeout=300,
            what="both workers training the holder's trials",
        )
        assert later.post("/studies", json=quick).status_code == 201
        wait_until(
            lambda: _study(later, "quick")["status"] == "completed",
            timeout=300,
            what="the later owner's study to complete",
        )
        wait_until(
            lambda: _study(holder, "hold")["status"] == "completed",
            timeout=300,
            what="the holder's study to end",
        )
        held = trials(settings, "hold")
        quick_trial = trials(settings, "quick")

    assert [t.state for t in quick_trial] == [TrialState.COMPLETE]
    started = quick_trial[0].datetime_start
    assert started is not None
    assert not [t for t in held if t.state == TrialState.FAIL], "the holder lost a trial"
    yielded = [t for t in held if records.yielded(t) is not None]
    assert yielded, "no holder's trial gave its worker up"
    # The later owner started before either of the holder's configurations ended: it got the
    # worker a yield freed, not one the time limit freed.
    ended = [t for t in held if t.state == TrialState.PRUNED and t not in yielded]
    assert all(t.datetime_complete is not None and t.datetime_complete > started for t in ended)
    assert all((records.prune_reason(t) or "").startswith("time:") for t in ended)
    for segment in yielded:
        (continuation,) = [t for t in held if records.continues(t) == segment.number]
        assert continuation.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert continuation.params == segment.params
        # It trained on from the step where its segment yielded.
        assert max(continuation.intermediate_values) > max(segment.intermediate_values)
        assert records.resumed_value(continuation) == pytest.approx(
            segment.intermediate_values[max(segment.intermediate_values)], rel=1e-4
        )
    # Exactly its budget: two configurations ended, nothing left queued or running.
    assert len([t for t in held if records.yielded(t) is None]) == 2
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in held)
