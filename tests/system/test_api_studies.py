"""The studies API against the real app over HTTP, on PostgreSQL and SQLite."""

from __future__ import annotations

import httpx
import optuna

from hpo.core import records
from hpo.core.spec import DEFAULT_SEARCH_SPACE
from tests.conftest import ApiServer, SpecFactory


def test_create_get_list(client: httpx.Client, make_spec: SpecFactory) -> None:
    created = client.post("/studies", json=make_spec("lora-a", description="first"))
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == "lora-a"
    assert body["owner"] == "alice"
    assert body["status"] == "running"
    assert set(body["spec"]["search"]["space"]) == set(DEFAULT_SEARCH_SPACE)
    assert body["trials"]["finished"] == 0
    assert body["best_value"] is None

    got = client.get("/studies/lora-a").json()
    assert got["spec"] == body["spec"]
    assert got["spec"]["description"] == "first"

    client.post("/studies", json=make_spec("lora-b"))
    page = client.get("/studies", params={"limit": 1, "offset": 1}).json()
    assert page["count"] == 2
    assert [s["name"] for s in page["data"]] == ["lora-b"]


def test_create_makes_the_optuna_study(
    api: ApiServer, client: httpx.Client, make_spec: SpecFactory
) -> None:
    spec = make_spec(
        "opt",
        model={"name_or_path": "builtin:tiny-encoder", "task": "sequence-classification"},
        dataset={"path": "builtin:demo-classification", "label_field": "label"},
        objective={"metric": "eval_accuracy", "direction": "maximize"},
    )
    assert client.post("/studies", json=spec).status_code == 201
    study = optuna.load_study(study_name="opt", storage=api.settings.database_url)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.user_attrs["owner"] == "alice"


def test_duplicate_name_is_409_and_keeps_the_first(
    api: ApiServer, client: httpx.Client, make_spec: SpecFactory
) -> None:
    assert client.post("/studies", json=make_spec("dup")).status_code == 201
    second = client.post("/studies", json=make_spec("dup", description="other"))
    assert second.status_code == 409
    assert "already exists" in second.json()["detail"]
    with api.client("bob") as bob:
        assert bob.post("/studies", json=make_spec("dup")).status_code == 409
    assert client.get("/studies/dup").json()["spec"]["description"] is None


def test_optuna_study_already_there_leaves_nothing_half_created(
    api: ApiServer, client: httpx.Client, make_spec: SpecFactory
) -> None:
    optuna.create_study(study_name="orphan", storage=api.settings.database_url)
    response = client.post("/studies", json=make_spec("orphan"))
    assert response.status_code == 409
    assert client.get("/studies/orphan").status_code == 404
    assert client.get("/studies").json()["count"] == 0


def test_pause_resume_stop_and_bad_transitions(
    client: httpx.Client, make_spec: SpecFactory
) -> None:
    client.post("/studies", json=make_spec("life"))
    assert client.post("/studies/life/pause").json()["status"] == "paused"
    assert client.post("/studies/life/pause").status_code == 409
    assert client.post("/studies/life/resume").json()["status"] == "running"
    assert client.post("/studies/life/stop").json()["status"] == "stopped"
    conflict = client.post("/studies/life/resume")
    assert conflict.status_code == 409
    assert "stopped" in conflict.json()["detail"]
    assert client.get("/studies/life").json()["status"] == "stopped"


def test_delete_removes_both_halves(
    api: ApiServer, client: httpx.Client, make_spec: SpecFactory
) -> None:
    client.post("/studies", json=make_spec("gone"))
    assert client.delete("/studies/gone").status_code == 204
    assert client.get("/studies/gone").status_code == 404
    names = optuna.get_all_study_names(storage=api.settings.database_url)
    assert "gone" not in names
    assert client.delete("/studies/gone").status_code == 404


def test_enqueue_validates_against_the_space(
    api: ApiServer, client: httpx.Client, make_spec: SpecFactory
) -> None:
    client.post("/studies", json=make_spec("warm"))
    ok = client.post("/studies/warm/trials", json={"params": {"lora_r": 8, "learning_rate": 1e-4}})
    assert ok.status_code == 201, ok.text
    study = optuna.load_study(study_name="warm", storage=api.settings.database_url)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].system_attrs["fixed_params"] == {"lora_r": 8, "learning_rate": 1e-4}

    out_of_range = client.post("/studies/warm/trials", json={"params": {"lora_r": 7}})
    assert out_of_range.status_code == 422
    assert out_of_range.json()["detail"][0]["loc"] == ["body", "params", "lora_r"]
    unknown = client.post("/studies/warm/trials", json={"params": {"lora_alpha": 16}})
    assert unknown.status_code == 422
    assert "search space" in unknown.json()["detail"][0]["msg"]
    too_small = client.post("/studies/warm/trials", json={"params": {"learning_rate": 1e-9}})
    assert too_small.status_code == 422
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1


def test_a_pbt_study_takes_no_enqueued_trials(
    client: httpx.Client, make_spec: SpecFactory
) -> None:
    pbt = {"type": "pbt", "population_size": 2, "interval_steps": 64}
    assert client.post("/studies", json=make_spec("pop", scheduler=pbt)).status_code == 201
    refused = client.post("/studies/pop/trials", json={"params": {"learning_rate": 1e-4}})
    assert refused.status_code == 409
    assert "PBT" in refused.json()["detail"]


def test_trials_and_best_pages(
    api: ApiServer, client: httpx.Client, make_spec: SpecFactory
) -> None:
    client.post("/studies", json=make_spec("tri"))
    assert client.get("/studies/tri/best").status_code == 404
    study = optuna.load_study(study_name="tri", storage=api.settings.database_url)
    for value in (3.0, 1.0, 2.0):
        trial = study.ask({"lora_r": optuna.distributions.IntDistribution(4, 64)})
        trial.report(value + 1, step=256)
        trial.set_user_attr("worker", "w1")
        study.tell(trial, value)
    page = client.get("/studies/tri/trials", params={"limit": 2}).json()
    assert page["count"] == 3
    assert [t["number"] for t in page["data"]] == [0, 1]
    first = page["data"][0]
    assert first["state"] == "complete"
    assert first["intermediate_values"] == {"256": 4.0}
    assert first["user_attrs"] == {"worker": "w1"}
    assert first["duration_s"] is not None
    best = client.get("/studies/tri/best").json()
    assert (best["number"], best["value"]) == (1, 1.0)
    detail = client.get("/studies/tri").json()
    assert detail["best_trial"] == 1
    assert detail["trials"]["complete"] == 3
    assert client.get("/studies/tri/trials", params={"state": "pruned"}).json()["count"] == 0
    # Counts and pages are SQL over Optuna's tables: other studies and OOM records stay out.
    client.post("/studies", json=make_spec("neighbour"))
    optuna.load_study(study_name="neighbour", storage=api.settings.database_url).ask()
    pruned = study.ask()
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.PRUNED, user_attrs={records.INFEASIBLE_RECORD_ATTR: 0}
        )
    )
    detail = client.get("/studies/tri").json()["trials"]
    assert (detail["complete"], detail["pruned"], detail["running"]) == (3, 1, 0)
    rest = client.get("/studies/tri/trials", params={"offset": 2, "limit": 2}).json()
    assert rest["count"] == 5
    assert [t["number"] for t in rest["data"]] == [2, 3]
    pruned_page = client.get("/studies/tri/trials", params={"state": "pruned"}).json()
    assert [t["number"] for t in pruned_page["data"]] == [3, 4]
    # A trial paused at a scheduler's rung is PRUNED to Optuna, and counts as paused.
    paused = study.ask()
    records.mark_paused(paused, at=256, reason="paused at 256 examples (rung 256)")
    study.tell(paused, state=optuna.trial.TrialState.PRUNED)
    detail = client.get("/studies/tri").json()["trials"]
    assert (detail["pruned"], detail["paused"], detail["finished"]) == (1, 1, 5)
    paused_page = client.get("/studies/tri/trials", params={"state": "paused"}).json()
    assert [t["number"] for t in paused_page["data"]] == [paused.number]
    assert paused_page["count"] == detail["paused"]
    pruned_page = client.get("/studies/tri/trials", params={"state": "pruned"}).json()
    assert [t["number"] for t in pruned_page["data"]] == [3, 4, paused.number]  # Optuna's state


def test_health(api: ApiServer) -> None:
    response = httpx.get(f"{api.base_url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}
