"""Pausing a study lets its running trial go at its next report, its state kept; resuming it
continues that trial from the step where it stopped (real worker, real training)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
from optuna.trial import TrialState

from hpo.core import records
from tests.conftest import ApiServer
from tests.workers import small_study, trials, wait_until

Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.mark.slow
def test_a_paused_study_lets_its_trial_go_and_resume_continues_it(
    pg_api: ApiServer, spawn_worker: Spawn
) -> None:
    settings = pg_api.settings
    spec = small_study(
        "long",
        training={"max_steps": 400, "max_seq_length": 32},
        pruner={"type": "none"},
        budget={"max_trials": 1},
    )
    with pg_api.client("alice") as client:
        assert client.post("/studies", json=spec).status_code == 201
        spawn_worker(settings, "w")
        wait_until(
            lambda: any(t.intermediate_values for t in trials(settings, "long")),
            timeout=300,
            what="the trial's first report",
        )
        assert client.post("/studies/long/pause").status_code == 200
        first, queued = wait_until(
            lambda: (
                (found := trials(settings, "long"))
                and len(found) == 2
                and found[0].state == TrialState.PRUNED
                and found
            ),
            timeout=300,
            what="the running trial to yield",
        )
        assert "its study was paused" in (records.yielded(first) or "")
        assert queued.state == TrialState.WAITING  # no worker claims a paused study's trial
        assert records.continues(queued) == first.number
        counts = client.get("/studies/long").json()["trials"]
        assert (counts["yielded"], counts["finished"], counts["waiting"]) == (1, 0, 1)

        assert client.post("/studies/long/resume").status_code == 200
        wait_until(
            lambda: client.get("/studies/long").json()["status"] == "completed",
            timeout=300,
            what="the study to complete after its resume",
        )
        first, continued = trials(settings, "long")
        counts = client.get("/studies/long").json()["trials"]
    assert continued.state == TrialState.COMPLETE
    assert continued.params == first.params
    assert max(continued.intermediate_values) > max(first.intermediate_values)
    batch = first.params["per_device_train_batch_size"]
    assert records.examples_seen(continued) == 400 * batch  # the whole run, not a restart
    assert (counts["complete"], counts["yielded"], counts["finished"]) == (1, 1, 1)
