"""Liveness is progress (issue 20, rows 1, 2 and 12): a trial that makes none is failed as
``stalled`` and retried under ``max_retries``, whether it holds the GIL (the supervisor kills
its process) or not (the worker's own check); a SIGTERM ends a worker whatever its trial does;
a stopped or paused study's trials of a dead worker do not stay RUNNING.

Real worker processes (``tests.worker_process``: the cheap objective, except that trials
with the marked params stall) and real PostgreSQL behind the real API.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from tests.conftest import ApiServer
from tests.workers import alive, log_events, small_study, trials, wait_until

pytestmark = pytest.mark.slow

MARKED = {"learning_rate": 0.001234, "per_device_train_batch_size": 8, "lora_r": 4}
STALL_WHEN = ("--stall-when", json.dumps({"learning_rate": MARKED["learning_rate"]}))
# Short deadlines for the stalling trials; setup (a cheap trial's whole life) stays generous,
# so that a busy machine never fails a healthy trial.
SHORT = {"HPO_PROGRESS_TIMEOUT": "2", "HPO_SETUP_TIMEOUT": "120", "HPO_MAX_RETRIES": "1"}
Spawn = Callable[..., subprocess.Popen[bytes]]


def _study_with_a_marked_trial(api: ApiServer, name: str, max_trials: int) -> None:
    spec = small_study(name, budget={"max_trials": max_trials}, pruner={"type": "none"})
    with api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        assert client.post(f"/studies/{name}/trials", json={"params": MARKED}).status_code == 201


def _stalled_chain(name: str, api: ApiServer) -> list[Any]:
    """The marked trial and its one retry: both failed as stalled, nothing retried after."""
    everything = trials(api.settings, name)
    marked = [t for t in everything if t.params == MARKED]
    assert [t.number for t in marked] == [0, 1]
    assert [t.state for t in marked] == [TrialState.FAIL, TrialState.FAIL]
    assert [t.user_attrs["fail_reason"] for t in marked] == ["stalled", "stalled"]
    assert marked[1].user_attrs["retried_from"] == 0
    assert not [t for t in everything if t.user_attrs.get("retried_from") == 1]
    assert not [t for t in everything if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    return everything


def test_a_stall_holding_the_gil_is_killed_failed_retried_and_the_worker_goes_on(
    pg_api: ApiServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    """Row 1: ``re`` on a catastrophic pattern holds the GIL, so no in-process check (and no
    heartbeat) runs: the supervisor kills the child, fails the trial, restarts the child."""
    _study_with_a_marked_trial(pg_api, "gil", max_trials=2)
    worker = spawn_worker(
        pg_api.settings,
        "gil",
        "--supervised",
        *STALL_WHEN,
        "--stall",
        "gil",
        "--idle-exit",
        "3",
        injected=True,
        **SHORT,
    )
    assert worker.wait(timeout=600) == 0
    everything = _stalled_chain("gil", pg_api)
    killed = log_events(tmp_path / "gil.log", "child_killed")
    assert [(e["reason"], e["trial_id"]) for e in killed] == [
        ("stalled", t._trial_id) for t in everything[:2]
    ]
    assert all("no progress in phase 'run'" in t.user_attrs["error"] for t in everything[:2])
    # The third child (after two kills) ran the study's normal trials to its budget.
    last = log_events(tmp_path / "gil.log", "child_start")[-1]
    finished = [t for t in everything if t.state == TrialState.COMPLETE]
    assert len(finished) == 2
    assert all(f"-{last['pid']}-" in t.user_attrs["worker"] for t in finished)


def test_a_python_level_stall_is_failed_by_the_workers_own_check(
    pg_api: ApiServer, spawn_worker: Spawn
) -> None:
    """Row 2: blocked without progress while the heartbeat stays fresh; no supervisor here,
    so only the worker's in-process check can fail it, and the same process goes on."""
    _study_with_a_marked_trial(pg_api, "python", max_trials=2)
    worker = spawn_worker(
        pg_api.settings,
        "python",
        *STALL_WHEN,
        "--stall",
        "python",
        "--idle-exit",
        "3",
        injected=True,
        **SHORT,
    )
    assert worker.wait(timeout=600) == 0
    everything = _stalled_chain("python", pg_api)
    assert {t.user_attrs["worker"] for t in everything} == {everything[0].user_attrs["worker"]}
    assert len([t for t in everything if t.state == TrialState.COMPLETE]) == 2


def test_sigterm_ends_a_worker_whose_trial_holds_the_gil(
    pg_api: ApiServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    """A SIGTERM is forwarded, ignored by the stalled child, which is killed after the
    shutdown grace; its trial is failed and queued again, never left RUNNING."""
    _study_with_a_marked_trial(pg_api, "term", max_trials=2)
    worker = spawn_worker(
        pg_api.settings,
        "term",
        "--supervised",
        *STALL_WHEN,
        "--stall",
        "gil",
        injected=True,
        HPO_SHUTDOWN_GRACE="2",
    )
    wait_until(
        lambda: [
            t
            for t in trials(pg_api.settings, "term")
            if t.state == TrialState.RUNNING and "worker" in t.user_attrs
        ],
        timeout=600,
        what="the marked trial to stall",
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=300) == 0
    [child] = log_events(tmp_path / "term.log", "child_start")
    assert not alive(child["pid"])
    [killed] = log_events(tmp_path / "term.log", "child_killed")
    assert killed["reason"] == "shutdown"
    everything = trials(pg_api.settings, "term")
    assert [(t.state, t.user_attrs["fail_reason"]) for t in everything[:1]] == [
        (TrialState.FAIL, "shutdown")
    ]
    assert "did not stop within 2 s of SIGTERM" in everything[0].user_attrs["error"]
    assert [(t.state, t.user_attrs["retried_from"], t.params) for t in everything[1:]] == [
        (TrialState.WAITING, 0, MARKED)
    ]


@pytest.mark.parametrize("action", ["stop", "pause"])
def test_a_halted_study_of_a_dead_worker_does_not_keep_its_trials_running(
    pg_api: ApiServer, spawn_worker: Spawn, action: str
) -> None:
    """Row 12: its trial is failed as stale after the grace period by another worker, which
    only sweeps (the study is not running), and the API counts nothing running."""
    _study_with_a_marked_trial(pg_api, "halted", max_trials=2)
    dead = spawn_worker(pg_api.settings, "dead", *STALL_WHEN, "--stall", "gil", injected=True)
    wait_until(
        lambda: [
            t
            for t in trials(pg_api.settings, "halted")
            if t.state == TrialState.RUNNING and "worker" in t.user_attrs
        ],
        timeout=600,
        what="the marked trial to run",
    )
    dead.kill()
    dead.wait()
    with pg_api.client() as client:
        assert client.post(f"/studies/halted/{action}").status_code == 200
        assert client.get("/studies/halted").json()["trials"]["running"] == 1
        spawn_worker(pg_api.settings, "sweeper", "--cheap", injected=True)

        def settled() -> bool:
            found = client.get("/studies/halted").json()["trials"]
            # Failed, then queued again: two writes, so wait for the second.
            return (found["running"], found["fail"], found["waiting"]) == (0, 1, 1)

        wait_until(settled, timeout=600, what="no trial running, one failed and re-queued")
    everything = trials(pg_api.settings, "halted")
    assert everything[0].user_attrs["fail_reason"].startswith("stale")
    assert everything[1].user_attrs["retried_from"] == 0
