"""Issue 33 (2): an owner cannot queue trials without bound (1,922 were enqueued in 60 s).

The real API on PostgreSQL: a concurrent burst of enqueues stops exactly at the per-study cap,
the per-owner cap holds over an owner's studies, each refusal is a 429 naming its quota, and
trials the service queues itself are neither counted nor refused.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import optuna
from optuna.trial import TrialState

from hpo.core.optuna_tables import trial_id
from hpo.core.settings import Settings
from tests.conftest import ApiServer
from tests.specs import minimal_spec

PER_STUDY = 5
PER_OWNER = 8
BURST = 20


def enqueue(client: httpx.Client, study: str, i: int) -> httpx.Response:
    return client.post(
        f"/studies/{study}/trials", json={"params": {"learning_rate": 1e-4 * (1 + i / 100)}}
    )


def waiting(settings: Settings, study: str) -> list[optuna.trial.FrozenTrial]:
    loaded = optuna.load_study(study_name=study, storage=settings.database_url)
    return loaded.get_trials(states=(TrialState.WAITING,))


def test_queued_trial_caps_answer_429_naming_them(pg_settings: Settings) -> None:
    settings = pg_settings.model_copy(
        update={"max_queued_trials_per_study": PER_STUDY, "max_queued_trials_per_owner": PER_OWNER}
    )
    with ApiServer(settings) as api, api.client("mallory") as mallory, api.client("zoe") as zoe:
        for name in ("q1", "q2"):
            mallory.post("/studies", json=minimal_spec(name)).raise_for_status()
        with ThreadPoolExecutor(10) as pool:  # concurrent enqueues cannot all pass
            codes = list(pool.map(lambda i: enqueue(mallory, "q1", i).status_code, range(BURST)))
        assert sorted(codes) == [201] * PER_STUDY + [429] * (BURST - PER_STUDY)
        assert len(waiting(settings, "q1")) == PER_STUDY
        refused = enqueue(mallory, "q1", 0)
        assert refused.status_code == 429
        body = refused.json()
        assert (body["quota"], body["limit"]) == ("max_queued_trials_per_study", PER_STUDY)
        assert "HPO_MAX_QUEUED_TRIALS_PER_STUDY" in body["detail"]

        # The owner's cap counts every study of theirs: q2 takes what q1 left of it.
        codes = [enqueue(mallory, "q2", i).status_code for i in range(PER_OWNER - PER_STUDY + 1)]
        assert codes == [201] * (PER_OWNER - PER_STUDY) + [429]
        body = enqueue(mallory, "q2", 0).json()
        assert (body["quota"], body["limit"]) == ("max_queued_trials_per_owner", PER_OWNER)

        # A queued trial that started is no longer queued: its place is free again.
        storage = optuna.storages.RDBStorage(settings.database_url)
        started = trial_id(waiting(settings, "q1")[0])
        storage.set_trial_state_values(started, TrialState.RUNNING)
        assert enqueue(mallory, "q2", 0).status_code == 201
        assert enqueue(mallory, "q2", 1).status_code == 429

        # Another owner is not affected, and what the service queues itself is not counted.
        zoe.post("/studies", json=minimal_spec("z1")).raise_for_status()
        service = optuna.load_study(study_name="z1", storage=settings.database_url)
        for i in range(PER_STUDY + 1):  # as a warm start or a continuation is queued
            service.enqueue_trial({"learning_rate": 1e-4 * (1 + i / 100)})
        assert enqueue(zoe, "z1", 0).status_code == 201
        storage.engine.dispose()
