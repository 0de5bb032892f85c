"""Warm start with the real API, PostgreSQL and a real worker: an owner's earlier study's best
configurations run first in a new study, and the trials that start before it has a result
follow the earlier studies' ranking, and later ones are TPE's with that ranking as a prior;
another owner's study cannot seed one, by name or by
``auto``."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from hpo.cli import app
from hpo.core.factory import check_params, load_study, optuna_distributions, suggest_params
from hpo.core.records import WARM_START_ATTR, WARM_START_RANKING_ATTR, WARM_START_SCORES_ATTR
from hpo.core.spec import StudySpec
from tests.conftest import ApiServer
from tests.workers import small_study, trials
from worker.loop import Worker

pytestmark = pytest.mark.slow

SPACE = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
    "lora_r": {"type": "categorical", "choices": [4, 8]},
}


def test_a_warm_started_study_runs_the_earlier_studys_best_first(pg_api: ApiServer) -> None:
    settings = pg_api.settings
    earlier = small_study(
        "earlier",
        space=SPACE,
        sampler={"type": "random", "seed": 0},
        pruner={"type": "none"},
        budget={"max_trials": 3},
    )
    # lora_r 16 is not in the new space: the earlier values are snapped to its nearest choice
    later = small_study(
        "later",
        space={**SPACE, "lora_r": {"type": "categorical", "choices": [4, 8, 16]}},
        pruner={"type": "none"},
        budget={"max_trials": 2},
        warm_start={"studies": ["earlier"], "top_k": 2},
    )
    with pg_api.client("alice") as alice, pg_api.client("bob") as bob:
        assert alice.post("/studies", json=earlier).status_code == 201
        Worker(settings, max_trials=3, cpu_threads=1).run(handle_signals=False)
        done = [t for t in trials(settings, "earlier") if t.state == TrialState.COMPLETE]
        assert len(done) >= 2, [t.user_attrs for t in trials(settings, "earlier")]
        best = sorted(done, key=lambda t: t.value)[:2]

        stolen = bob.post("/studies", json={**later, "name": "bobs"})
        assert stolen.status_code == 422, stolen.text
        (error,) = stolen.json()["detail"]
        assert error["loc"] == ["body", "search", "warm_start", "studies", 0]
        assert "earlier" in error["msg"]
        assert bob.get("/studies/bobs").status_code == 404  # nothing was registered

        created = alice.post("/studies", json=later)
        assert created.status_code == 201, created.text
    Worker(settings, max_trials=2, cpu_threads=1).run(handle_signals=False)
    first = sorted(trials(settings, "later"), key=lambda t: t.number)[:2]
    assert [t.state for t in first] == [TrialState.COMPLETE] * 2
    assert [t.params for t in first] == [t.params for t in best]
    assert [t.user_attrs[WARM_START_ATTR] for t in first] == ["earlier"] * 2

    # Trials that start before the study has a result (a first batch on many workers) follow
    # the ranking: two asked at once through the worker's own loader, as two workers would.
    batch = small_study(
        "batch",
        space=SPACE,
        pruner={"type": "none"},
        budget={"max_trials": 2},
        warm_start={"studies": ["earlier"], "top_k": 1},
    )
    with pg_api.client("alice") as alice:
        assert alice.post("/studies", json=batch).status_code == 201
    search = StudySpec.model_validate(batch).search
    study = load_study("batch", search, settings.database_url)
    asked = [study.ask() for _ in range(2)]
    params = [suggest_params(trial, search) for trial in asked]
    study.tell(asked[0], 1.0)
    study.tell(asked[1], state=TrialState.FAIL)
    assert params == [t.params for t in best]  # the enqueued best, then the ranking's next
    # after the first result TPE proposes, fitted to the ranking (as stored) as its prior
    scores = study.user_attrs[WARM_START_SCORES_ATTR]
    assert len(scores) == len(study.user_attrs[WARM_START_RANKING_ATTR]) >= 2
    assert scores == sorted(scores)
    after = study.ask()
    assert check_params(search, suggest_params(after, search)).keys() == SPACE.keys()
    study.tell(after, state=TrialState.FAIL)


def test_auto_seeds_from_the_owners_newest_studies_of_the_same_task(pg_api: ApiServer) -> None:
    """Earlier studies get their finished trials through the storage (no training): alice's
    two of the same task seed her new study, newest first; her study of another data shape,
    her study with no result and bob's newer study of the same task do not."""
    url = pg_api.settings.database_url

    def earlier(client: Any, name: str, best_lr: float | None, **parts: Any) -> None:
        spec = small_study(name, space=SPACE, **parts)
        assert client.post("/studies", json=spec).status_code == 201
        if best_lr is not None:  # the best first, then a worse one
            study = optuna.load_study(study_name=name, storage=url)
            dists = optuna_distributions(StudySpec.model_validate(spec).search)
            for value, lr in enumerate((best_lr, 1e-3)):
                params = {"learning_rate": lr, "lora_r": 8}
                study.add_trial(create_trial(params=params, distributions=dists, value=value))

    new = small_study("auto", space=SPACE, warm_start={"auto": True, "top_k": 2})
    other_shape = {**new["train"]["dataset"], "shape": "language_modeling"}
    with (
        pg_api.client("alice") as alice,
        pg_api.client("bob") as bob,
        pg_api.client("carol") as carol,
    ):
        earlier(alice, "a-old", 1e-4)
        earlier(alice, "a-shape", 2e-4, dataset=other_shape)
        earlier(alice, "a-new", 3e-4)
        earlier(alice, "a-empty", None)
        earlier(bob, "b-newest", 5e-4)
        created = alice.post("/studies", json=new)
        assert created.status_code == 201, created.text
        assert created.json()["warm_start_from"] == ["a-new", "a-old"]
        bobs = bob.post("/studies", json={**new, "name": "auto-bob"}).json()
        assert bobs["warm_start_from"] == ["b-newest"]
        cold = carol.post("/studies", json={**new, "name": "auto-carol"})
        assert cold.status_code == 201, cold.text
        assert cold.json()["warm_start_from"] == []  # nothing matched: it starts cold
        assert carol.get("/studies/auto-carol").json()["warm_start_from"] == []
    queued = sorted(trials(pg_api.settings, "auto"), key=lambda t: t.number)
    assert [t.state for t in queued] == [TrialState.WAITING] * 2
    assert [t.system_attrs["fixed_params"]["learning_rate"] for t in queued] == [3e-4, 1e-4]
    assert [t.user_attrs[WARM_START_ATTR] for t in queued] == ["a-new", "a-old"]
    assert trials(pg_api.settings, "auto-carol") == []
    for owner, name, says in (
        ("alice", "auto", "warm start from: a-new, a-old"),
        ("carol", "auto-carol", "warm start from: no earlier study matched: started cold"),
    ):
        env = {"HPO_API_URL": pg_api.base_url, "HPO_TOKEN": pg_api.token(owner)}
        shown = CliRunner().invoke(app, ["study", "show", name], env=env)
        assert shown.exit_code == 0 and says in shown.stdout, shown.stdout
