"""Faults that must not cost a trial or the budget: races for the last slot, a broken disk."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import text

from hpo.core.settings import Settings
from hpo.core.storage import make_storage
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


def test_unwritable_artifact_folder_keeps_the_trial(
    pg_api: ApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the artifact folder should be")
    settings = pg_api.settings.model_copy(update={"artifact_dir": blocker / "artifacts"})
    with pg_api.client() as client:
        spec = small_study("diskfull", budget={"max_trials": 2}, pruner={"type": "none"})
        assert client.post("/studies", json=spec).status_code == 201
        with caplog.at_level(logging.INFO, logger="hpo.worker"):
            assert Worker(settings, idle_exit=0.5, cpu_threads=1).run(handle_signals=False) == 2
        done = client.get("/studies/diskfull/trials").json()["data"]
        assert [t["state"] for t in done] == ["complete", "complete"]
        assert "NotADirectoryError" in done[0]["user_attrs"]["adapter_error"]
        events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "hpo.worker"]
        logged = [e for e in events if e["event"] == "adapter_error"]
        assert logged and "NotADirectoryError" in logged[0]["error"]
        assert client.get("/studies/diskfull").json()["status"] == "completed"
        missing = client.get("/studies/diskfull/best/adapter")
        assert missing.status_code == 404
        assert "no saved adapter" in missing.json()["detail"]


def test_repeated_kill_9_keeps_the_books(pg_api: ApiServer, spawn_worker: Spawn) -> None:
    """Three workers killed at random points of their first trial (training, reporting, tell);
    a fourth worker then fails their stale trials after the grace period and retries them."""
    spec = small_study(
        "massacre",
        budget={"max_trials": 6},
        pruner={"type": "none"},
        training={"num_train_epochs": 2, "max_seq_length": 32},
    )
    with pg_api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
    rng = random.Random(2026)
    for round_ in range(3):
        victim = spawn_worker(pg_api.settings, f"victim{round_}")
        wait_until(
            lambda v=victim: any(
                f"-{v.pid}-" in t.user_attrs.get("worker", "")
                for t in trials(pg_api.settings, "massacre")
            ),
            timeout=120,
            what="the victim's first trial",
        )
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


def test_a_trial_is_never_running_without_a_heartbeat(pg_api: ApiServer) -> None:
    """A worker killed between creating its trial and starting the heartbeat thread (while it
    samples) must not leave that trial RUNNING forever, holding a budget slot."""
    with pg_api.client() as client:
        spec = small_study("orphan", budget={"max_trials": 2}, pruner={"type": "none"})
        assert client.post("/studies", json=spec).status_code == 201
    url = pg_api.settings.database_url
    heartbeats = "SELECT count(*) FROM trial_heartbeats WHERE trial_id = :id"
    claimed = optuna.load_study(study_name="orphan", storage=make_storage(pg_api.settings))
    claimed_id = claimed.ask()._trial_id
    engine = RDBStorage(url).engine
    with engine.connect() as conn:
        assert conn.execute(text(heartbeats), {"id": claimed_id}).scalar() == 1
        # Plain Optuna storage: the state a worker killed mid-`ask` left behind before the fix.
        plain = optuna.load_study(study_name="orphan", storage=url)
        orphan_id = plain.ask()._trial_id
        assert conn.execute(text(heartbeats), {"id": orphan_id}).scalar() == 0
    # The worker sweeps at every poll: both dead trials are failed one grace period after it
    # first sees them, then retried; it exits once idle for longer than that.
    idle = 2 * pg_api.settings.grace_period + 2
    ran = Worker(pg_api.settings, idle_exit=idle, cpu_threads=1).run(handle_signals=False)
    everything = trials(pg_api.settings, "orphan")
    states = {t._trial_id: t.state for t in everything}
    assert states[claimed_id] == states[orphan_id] == TrialState.FAIL
    assert not [t for t in everything if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert ran == len([t for t in everything if t.state == TrialState.COMPLETE]) == 2
    failed = [t for t in everything if t.state == TrialState.FAIL]
    assert all(t.user_attrs["fail_reason"].startswith("stale") for t in failed)
    retries = [t for t in everything if "retried_from" in t.user_attrs]
    assert sorted(t.user_attrs["retried_from"] for t in retries) == sorted(
        t.number for t in failed
    )
    assert not [t for t in retries if "fail_reason" in t.user_attrs]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("skew", [-3600, 3600], ids=["node-clock-behind", "node-clock-ahead"])
def test_the_orphan_sweep_uses_the_database_clock(pg_settings: Settings, skew: int) -> None:
    """A trial's datetime_start comes from the clock of the node that created it; the sweep
    must not trust it. A node an hour behind must not get its fresh trial failed at once, and
    a node an hour ahead must not keep a dead trial alive."""
    storage = make_storage(pg_settings)
    optuna.create_study(study_name="clocks", storage=storage)
    plain = optuna.load_study(study_name="clocks", storage=pg_settings.database_url)
    trial_id = plain.ask()._trial_id
    skewed = "UPDATE trials SET datetime_start = datetime_start + make_interval(secs => :s) "
    with storage.engine.begin() as conn:
        conn.execute(text(skewed + "WHERE trial_id = :id"), {"s": skew, "id": trial_id})
    sweeper = optuna.load_study(study_name="clocks", storage=storage)

    def state() -> TrialState:
        optuna.storages.fail_stale_trials(sweeper)
        return storage.get_trial(trial_id).state

    assert state() == TrialState.RUNNING  # adopted with a heartbeat on the database's clock
    wait_until(lambda: state() == TrialState.FAIL, timeout=60, what="the orphan to be failed")
    assert storage.get_trial(trial_id).user_attrs["fail_reason"].startswith("stale")


class _SlowSampler(optuna.samplers.RandomSampler):
    """Relative sampling slower than the grace period (a GP fit on a big study)."""

    def __init__(self, delay: float) -> None:
        super().__init__(seed=0)
        self.delay = delay

    def infer_relative_search_space(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self.delay)
        return super().infer_relative_search_space(*args, **kwargs)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_slow_sampling_keeps_its_trial(pg_api: ApiServer) -> None:
    """A neighbour's stale sweep while this worker's sampler is still busy must not fail
    the trial it has claimed: no gap between the claim's first heartbeat and Optuna's
    heartbeat thread may be as long as sampling."""
    settings = pg_api.settings
    storage = make_storage(settings)
    study = optuna.create_study(
        study_name="slow-sampler", storage=storage, sampler=_SlowSampler(settings.grace_period + 3)
    )
    failed: list[list[int]] = []

    def neighbour_sweeps() -> None:
        neighbour = optuna.load_study(study_name="slow-sampler", storage=make_storage(settings))
        wait_until(
            lambda: neighbour.get_trials(states=(TrialState.RUNNING,)),
            timeout=30,
            what="the claim",
        )
        time.sleep(settings.grace_period + 1)
        optuna.storages.fail_stale_trials(neighbour)
        failed.append([t.number for t in neighbour.get_trials(states=(TrialState.FAIL,))])

    sweeper = threading.Thread(target=neighbour_sweeps)
    sweeper.start()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    sweeper.join()
    assert failed == [[]]
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]
