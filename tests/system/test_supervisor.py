"""``hpo worker --processes 2``: real worker children on CPU, supervised."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hpo.core import records
from tests.conftest import ApiServer
from tests.workers import alive, log_events, small_study, trials, wait_until, worker_env
from worker.callbacks import INTERRUPTED

pytestmark = pytest.mark.slow


def test_children_restart_and_stop_with_the_supervisor(pg_api: ApiServer, tmp_path: Path) -> None:
    settings = pg_api.settings
    # Trials of a few seconds, so a signal finds one training.
    spec = small_study(
        "supervised",
        budget={"max_trials": 12},
        pruner={"type": "none"},
        training={"num_train_epochs": 4, "max_seq_length": 32},
    )
    with pg_api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
    log = tmp_path / "supervisor.log"
    with log.open("wb") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "hpo", "worker", "--processes", "2", "--cpu-threads", "2"],
            env=worker_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: len(log_events(log, "child_start")) == 2, timeout=30, what="children")
        started = log_events(log, "child_start")
        assert sorted(e["child"] for e in started) == ["cpu0", "cpu1"]

        def training(pid: int) -> list[int]:
            return [
                t.number
                for t in trials(settings, "supervised")
                if t.state == TrialState.RUNNING
                and "setup_seconds" in t.user_attrs
                and f"-{pid}-" in t.user_attrs.get("worker", "")
            ]

        victim = started[0]
        killed = wait_until(
            lambda: training(victim["pid"]), timeout=120, what="the victim to train"
        )
        os.kill(victim["pid"], signal.SIGKILL)
        crash = wait_until(lambda: log_events(log, "child_crash"), timeout=10, what="the crash")[0]
        assert crash["code"] == -signal.SIGKILL and crash["child"] == victim["child"]
        restarted = wait_until(
            lambda: log_events(log, "child_start")[2:], timeout=10, what="the restart"
        )[0]
        assert restarted["child"] == victim["child"] and restarted["pid"] != victim["pid"]

        children = [started[1]["pid"], restarted["pid"]]
        wait_until(
            lambda: training(children[0]) or training(children[1]),
            timeout=120,
            what="a child training",
        )
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    assert not [pid for pid in children if alive(pid)]
    assert {e["child"] for e in log_events(log, "child_exit")} == {"cpu0", "cpu1"}
    everything = trials(settings, "supervised")
    # Only the SIGKILLed child's trial is left RUNNING (a later worker's sweep fails it).
    assert [t.number for t in everything if t.state == TrialState.RUNNING] == killed
    stopped = [t for t in everything if records.yielded(t) is not None]
    assert stopped, "no child was training when the supervisor stopped"
    for trial in stopped:  # paused where it was, its state kept: a queued trial continues it
        assert trial.state == TrialState.PRUNED
        assert (records.yielded(trial) or "").startswith(INTERRUPTED)
        requeued = [t for t in everything if records.continues(t) == trial.number]
        assert [t.state for t in requeued] == [TrialState.WAITING]
        assert requeued[0].system_attrs["fixed_params"] == trial.params
