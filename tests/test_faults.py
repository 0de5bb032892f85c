"""Faults that must not cost a trial or the budget: races for the last slot, a broken disk."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.conftest import ApiServer
from tests.workers import small_study, trials
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
