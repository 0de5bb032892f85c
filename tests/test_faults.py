"""Faults that must not cost a trial or the budget: races for the last slot, a broken disk."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.conftest import ApiServer
from tests.workers import small_study, trials, wait_until
from worker.loop import Worker

pytestmark = pytest.mark.slow
Spawn = Callable[..., subprocess.Popen[bytes]]


def test_two_workers_racing_for_the_last_trial(pg_api: ApiServer, spawn_worker: Spawn) -> None:
    with pg_api.client() as client:
        assert (
            client.post("/studies", json=small_study("last", budget={"max_trials": 1})).status_code
            == 201
        )
    racers = [spawn_worker(pg_api.settings, f"r{i}", "--idle-exit", "2") for i in range(3)]
    assert [r.wait(timeout=180) for r in racers] == [0, 0, 0]
    everything = trials(pg_api.settings, "last")
    assert len(everything) == 1
    assert everything[0].state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_unwritable_artifact_folder_keeps_the_trial(pg_api: ApiServer, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the artifact folder should be")
    settings = pg_api.settings.model_copy(update={"artifact_dir": blocker / "artifacts"})
    with pg_api.client() as client:
        spec = small_study("diskfull", budget={"max_trials": 2}, pruner={"type": "none"})
        assert client.post("/studies", json=spec).status_code == 201
        assert Worker(settings, idle_exit=0.5, cpu_threads=1).run(handle_signals=False) == 2
        done = client.get("/studies/diskfull/trials").json()["data"]
        assert [t["state"] for t in done] == ["complete", "complete"]
        assert "NotADirectoryError" in done[0]["user_attrs"]["adapter_error"]
        assert client.get("/studies/diskfull").json()["status"] == "completed"
        missing = client.get("/studies/diskfull/best/adapter")
        assert missing.status_code == 404
        assert "no saved adapter" in missing.json()["detail"]


def test_repeated_kill_9_keeps_the_books(pg_api: ApiServer, spawn_worker: Spawn) -> None:
    """Three workers killed at random points of their first trial (training, reporting, tell);
    a fourth worker then fails their stale trials after the grace period and retries them."""
    spec = small_study("massacre", budget={"max_trials": 6}, pruner={"type": "none"},
                       training={"num_train_epochs": 2, "max_seq_length": 32})  # fmt: skip
    with pg_api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
    rng = random.Random(2026)
    for round_ in range(3):
        victim = spawn_worker(pg_api.settings, f"victim{round_}")
        wait_until(
            lambda v=victim: any(f"-{v.pid}-" in t.user_attrs.get("worker", "")
                                 for t in trials(pg_api.settings, "massacre")),
            timeout=120, what="the victim's first trial",
        )  # fmt: skip
        time.sleep(rng.uniform(0.0, 2.5))
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
    survivor = spawn_worker(pg_api.settings, "survivor", "--idle-exit", "8")
    assert survivor.wait(timeout=300) == 0
    everything = trials(pg_api.settings, "massacre")
    numbers = [t.number for t in everything]
    assert len(numbers) == len(set(numbers))
    assert not [t for t in everything if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    finished = [t for t in everything if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    stale = [t.number for t in everything if t.state == TrialState.FAIL]
    retries = [t for t in everything if "retried_from" in t.user_attrs]
    assert stale
    assert sorted(t.user_attrs["retried_from"] for t in retries) == stale
    for retry in retries:
        original = everything[retry.user_attrs["retried_from"]]
        assert original.state == TrialState.FAIL
        assert original.params == retry.params
        assert len(retry.system_attrs["retry_history"]) <= pg_api.settings.max_retries
