"""Real worker processes against PostgreSQL: budget, pruning, adapters, kill -9, SIGTERM, OOM."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.core import records
from hpo.core.records import INFEASIBLE_RECORD_ATTR
from tests.conftest import ApiServer
from tests.workers import small_study, trials, wait_until
from worker.callbacks import INTERRUPTED

pytestmark = pytest.mark.slow
Spawn = Callable[..., subprocess.Popen[bytes]]


def _finished(api: ApiServer, name: str) -> list[optuna.trial.FrozenTrial]:
    return [
        t
        for t in trials(api.settings, name)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and INFEASIBLE_RECORD_ATTR not in t.user_attrs
    ]


def test_two_workers_finish_exactly_max_trials(
    pg_api: ApiServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    with pg_api.client() as client:
        assert client.post("/studies", json=small_study("e2e")).status_code == 201
        workers = [spawn_worker(pg_api.settings, f"w{i}", "--idle-exit", "3") for i in range(2)]
        codes = [w.wait(timeout=240) for w in workers]
        assert codes == [0, 0], (tmp_path / "w0.log").read_text()[-3000:]

        study = client.get("/studies/e2e").json()
        assert study["status"] == "completed"
        assert study["trials"]["finished"] == 8
        assert study["trials"]["running"] == 0
        assert study["trials"]["pruned"] >= 1
        assert study["best_params"] is not None

        all_trials = client.get("/studies/e2e/trials", params={"limit": 100}).json()["data"]
        assert {t["user_attrs"]["worker"] for t in all_trials} == {
            line["worker"]
            for i in range(2)
            for line in map(json.loads, _events(tmp_path / f"w{i}.log"))
            if line["event"] == "worker_start"
        }
        for trial in all_trials:
            steps = [int(s) for s in trial["intermediate_values"]]
            assert steps, trial
            # every report but a trial's final one lies on the common 64-example grid
            assert all(s % 64 == 0 for s in steps[:-1]), steps
            assert 0 < trial["user_attrs"]["setup_seconds"] < trial["user_attrs"]["device_seconds"]
            if trial["state"] == "pruned":  # a pruned trial says why and how far it got
                assert trial["user_attrs"]["prune_reason"].startswith("pruner:")
                assert 0 < trial["user_attrs"]["examples_seen"] < 256

        best = client.get("/studies/e2e/best").json()
        adapter = client.get("/studies/e2e/best/adapter")
        assert adapter.status_code == 200
        names = zipfile.ZipFile(io.BytesIO(adapter.content)).namelist()
        assert "adapter_config.json" in names
        assert best["number"] == study["best_trial"]


def _events(log: Path) -> list[str]:
    return [
        line.split(" hpo.worker ", 1)[1]
        for line in log.read_text().splitlines()
        if " hpo.worker " in line
    ]


def _running_trial_of(api: ApiServer, name: str, pid: int) -> optuna.trial.FrozenTrial | None:
    for t in trials(api.settings, name):
        if (
            t.state == TrialState.RUNNING
            and f"-{pid}-" in t.user_attrs.get("worker", "")
            and t.intermediate_values
        ):
            return t
    return None


def test_kill_9_mid_trial_is_retried_and_budget_holds(
    pg_api: ApiServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    spec = small_study(
        "killed",
        budget={"max_trials": 5},
        pruner={"type": "none"},
        training={"num_train_epochs": 4, "max_seq_length": 32},
    )
    with pg_api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
    victim = spawn_worker(pg_api.settings, "victim")
    survivor = spawn_worker(pg_api.settings, "survivor", "--idle-exit", "8")
    killed = wait_until(
        lambda: _running_trial_of(pg_api, "killed", victim.pid), timeout=120, what="a trial"
    )
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert survivor.wait(timeout=240) == 0
    everything = trials(pg_api.settings, "killed")
    assert len(_finished(pg_api, "killed")) == 5
    assert not [t for t in everything if t.state == TrialState.RUNNING]
    stale = everything[killed.number]
    assert stale.state == TrialState.FAIL
    retries = [t for t in everything if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1
    assert retries[0].params == killed.params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_sigterm_exits_quickly_and_the_trial_continues_later(
    pg_api: ApiServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    spec = small_study(
        "term",
        pruner={"type": "none"},
        training={"num_train_epochs": 20, "max_seq_length": 32},
    )
    with pg_api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
    worker = spawn_worker(pg_api.settings, "w")
    running = wait_until(
        lambda: _running_trial_of(pg_api, "term", worker.pid), timeout=120, what="a trial"
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    after = trials(pg_api.settings, "term")
    # It paused at the step it had reached, its state kept: a queued trial continues it.
    assert after[running.number].state == TrialState.PRUNED
    assert (records.yielded(after[running.number]) or "").startswith(INTERRUPTED)
    queued = [t for t in after if t.state == TrialState.WAITING]
    assert [records.continues(t) for t in queued] == [running.number]
    assert queued[0].system_attrs["fixed_params"] == running.params


def test_oom_fails_the_trial_marks_it_infeasible_and_goes_on(
    pg_api: ApiServer, spawn_worker: Spawn
) -> None:
    spec = small_study("oom", budget={"max_trials": 3}, pruner={"type": "none"})
    with pg_api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        enqueued = {"per_device_train_batch_size": 16, "lora_r": 8, "learning_rate": 1e-3}
        assert client.post("/studies/oom/trials", json={"params": enqueued}).status_code == 201
    worker = spawn_worker(
        pg_api.settings,
        "w",
        "--idle-exit",
        "3",
        "--inject-oom",
        json.dumps({"per_device_train_batch_size": 16}),
        injected=True,
    )
    assert worker.wait(timeout=240) == 0
    everything = trials(pg_api.settings, "oom")
    first = everything[0]
    assert first.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"] == "oom"
    assert "OutOfMemoryError" in first.user_attrs["error"]
    records = [t for t in everything if t.user_attrs.get(INFEASIBLE_RECORD_ATTR) == 0]
    assert len(records) == 1
    assert records[0].constraints == {"oom": 1.0}
    assert records[0].params == first.params
    finished = _finished(pg_api, "oom")
    assert len(finished) == 3
    assert all(t.params["per_device_train_batch_size"] == 8 for t in finished)
