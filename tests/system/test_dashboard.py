"""optuna-dashboard served by the API: behind its tokens, one owner's studies, read-only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from optuna.artifacts import upload_artifact
from optuna.storages import RDBStorage
from sqlalchemy import select

from hpo.core.artifacts import artifact_store
from hpo.core.db import ArtifactRecord, Database, StudyRecord
from hpo.core.settings import Settings
from hpo.core.storage import make_storage
from hpo.core.tokens import create_token, revoke_token
from service import dashboard
from service.dashboard import COOKIE
from service.dashboard_storage import OwnerScopedStorage
from tests.conftest import ApiServer, SpecFactory

READ_ONLY = {"detail": dashboard.READ_ONLY, "reason": dashboard.READ_ONLY}


@dataclass(frozen=True)
class Study:
    """A registered study as optuna-dashboard addresses it: Optuna ids and artifact ids."""

    name: str
    study_id: int
    trial_id: int  # finished; holds ``artifact_id``
    running_trial_id: int
    artifact_id: str  # recorded by "the worker" in hpo_artifacts
    unrecorded_artifact_id: str  # in the trial's attributes only
    study_artifact_id: str
    artifact_bytes: bytes


@dataclass(frozen=True)
class World:
    api: ApiServer
    alice: Study
    alice_other: Study
    bob: Study


@pytest.fixture
def storage(pg_api: ApiServer) -> Iterator[RDBStorage]:
    """Plain Optuna storage on the API's database, for what a worker would write."""
    storage = RDBStorage(pg_api.settings.database_url)
    yield storage
    storage.engine.dispose()


def _populate(settings: Settings, storage: RDBStorage, name: str, tmp: Path) -> Study:
    """Two finished trials and a running one, with a trial artifact and a study artifact."""
    study = optuna.load_study(study_name=name, storage=storage)
    store = artifact_store(settings)
    content = f"adapter of {name}".encode()
    (tmp / f"{name}.bin").write_bytes(content)
    (tmp / f"{name}.txt").write_text(f"notes on {name}")
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    artifact_id = upload_artifact(
        artifact_store=store, file_path=str(tmp / f"{name}.bin"), study_or_trial=trial
    )
    unrecorded_artifact_id = upload_artifact(
        artifact_store=store, file_path=str(tmp / f"{name}.txt"), study_or_trial=trial
    )
    with Database(storage.engine).session() as session:
        record_id = session.scalar(select(StudyRecord.id).where(StudyRecord.name == name))
        session.add(
            ArtifactRecord(
                artifact_id=artifact_id,
                study_id=record_id,
                trial_id=trial._trial_id,
                trial_number=trial.number,
                kind="adapter",
            )
        )
    study.tell(trial, 0.5)
    study.enqueue_trial({"x": 0.9})
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=1)
    study_artifact_id = upload_artifact(
        artifact_store=store, file_path=str(tmp / f"{name}.txt"), study_or_trial=study
    )
    return Study(
        name=name,
        study_id=study._study_id,
        trial_id=trial._trial_id,
        running_trial_id=study.ask()._trial_id,
        artifact_id=artifact_id,
        unrecorded_artifact_id=unrecorded_artifact_id,
        study_artifact_id=study_artifact_id,
        artifact_bytes=content,
    )


@pytest.fixture
def world(pg_api: ApiServer, storage: RDBStorage, make_spec: SpecFactory, tmp_path: Path) -> World:
    """alice registers two studies and bob one, over REST; Optuna fills them in."""
    owners = {"alice-a": "alice", "alice-b": "alice", "bob-a": "bob"}
    for name, owner in owners.items():
        with pg_api.client(owner) as client:
            assert client.post("/studies", json=make_spec(name)).status_code == 201
    studies = {name: _populate(pg_api.settings, storage, name, tmp_path) for name in owners}
    return World(pg_api, studies["alice-a"], studies["alice-b"], studies["bob-a"])


@contextmanager
def _signed_in(api: ApiServer, token: str) -> Iterator[httpx.Client]:
    """A client that logged in through the form, as a browser does: it holds the cookie."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        response = client.post("/login", data={"token": token})
        assert response.status_code == 303, response.text
        assert response.headers["location"] == "/dashboard"
        yield client


def _listed(client: httpx.Client) -> list[str]:
    response = client.get("/api/studies")
    assert response.status_code == 200, response.text
    return [s["study_name"] for s in response.json()["study_summaries"]]


def test_each_owner_sees_only_their_studies(world: World) -> None:
    """The finding: optuna-dashboard listed every owner's studies to anyone who reached it."""
    with (
        _signed_in(world.api, world.api.token("alice")) as alice,
        world.api.client("bob") as bob,  # a bearer header works as well as the cookie
        httpx.Client(base_url=world.api.base_url) as anonymous,
    ):
        assert _listed(alice) == ["alice-a", "alice-b"]
        assert _listed(bob) == ["bob-a"]
        assert anonymous.get("/api/studies").status_code == 401


@pytest.mark.parametrize(
    "path", ["/api/studies", "/api/meta", "/csv/1", "/artifacts/1/2/ab-12", "/static/x.js"]
)
def test_anonymous_data_requests_are_401(pg_api: ApiServer, path: str) -> None:
    with httpx.Client(base_url=pg_api.base_url) as anonymous:
        for headers in ({}, {"Authorization": "Bearer hpo_wrong"}, {"Cookie": f"{COOKIE}=x"}):
            response = anonymous.get(path, headers=headers)
            assert response.status_code == 401, (headers, response.text)
            assert response.json()["detail"].startswith(("missing", "invalid"))


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/studies/1/trials"])
def test_anonymous_pages_redirect_to_login(pg_api: ApiServer, path: str) -> None:
    with httpx.Client(base_url=pg_api.base_url) as anonymous:
        response = anonymous.get(path)
        assert response.status_code == 303
        assert response.headers["location"] == "/login"
        form = anonymous.get("/login")
        assert form.status_code == 200
        assert '<form method="post" action="/login">' in form.text
        assert 'name="token"' in form.text
        assert not {"<script", "src=", "href="} & set(form.text.split())  # nothing to fetch


def _cookie_attributes(response: httpx.Response) -> set[str]:
    name_value, *attributes = response.headers["set-cookie"].split(";")
    assert name_value.startswith(f"{COOKIE}=")
    return {a.strip().lower() for a in attributes}


def test_login_sets_a_strict_httponly_cookie_and_logout_clears_it(pg_api: ApiServer) -> None:
    token = pg_api.token("alice")
    with httpx.Client(base_url=pg_api.base_url) as browser:
        wrong = browser.post("/login", data={"token": "hpo_wrong"})
        assert wrong.status_code == 401
        assert "unknown, revoked or expired" in wrong.text and 'name="token"' in wrong.text
        assert "set-cookie" not in wrong.headers

        response = browser.post("/login", data={"token": token})
        assert response.status_code == 303 and response.headers["location"] == "/dashboard"
        assert _cookie_attributes(response) == {"httponly", "path=/", "samesite=strict"}
        page = browser.get("/dashboard")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert _listed(browser) == []

        out = browser.post("/logout")
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert browser.get("/api/studies").status_code == 401
        assert browser.get("/dashboard").headers["location"] == "/login"


def test_cookie_is_secure_behind_a_trusted_tls_proxy(pg_api: ApiServer) -> None:
    """uvicorn trusts X-Forwarded-Proto from loopback (FORWARDED_ALLOW_IPS) and reports https."""
    with httpx.Client(base_url=pg_api.base_url) as proxy:
        response = proxy.post(
            "/login", data={"token": pg_api.token("alice")}, headers={"X-Forwarded-Proto": "https"}
        )
    assert response.status_code == 303
    assert "secure" in _cookie_attributes(response)


def test_revoked_token_signs_the_browser_out(pg_api: ApiServer) -> None:
    with Database(pg_api.settings.database_url) as db:
        with db.session() as session:
            token = create_token(session, name="alice-laptop", owner="alice")
        with _signed_in(pg_api, token) as browser:
            assert browser.get("/api/studies").status_code == 200
            with db.session() as session:
                revoke_token(session, name="alice-laptop")
            assert browser.get("/api/studies").status_code == 401
            assert browser.get("/dashboard").headers["location"] == "/login"


def test_other_owners_ids_are_404(world: World) -> None:
    bob = world.bob
    paths = [
        f"/api/studies/{bob.study_id}",
        f"/api/studies/{bob.study_id}/param_importances",
        f"/csv/{bob.study_id}",
        f"/artifacts/{bob.study_id}/{bob.trial_id}/{bob.artifact_id}",
    ]
    with (
        _signed_in(world.api, world.api.token("alice")) as alice,
        world.api.client("bob") as owner,
    ):
        for path in paths:
            assert alice.get(path).status_code == 404, path
            assert owner.get(path).status_code == 200, path
        assert alice.get(f"/api/studies/{bob.study_id}/plot/slice").status_code == 404


PLOTS = ("contour", "slice", "parallel_coordinate", "rank", "edf", "timeline")


def test_plot_routes_draw_for_the_owner_only(world: World) -> None:
    """optuna-dashboard's plot routes need plotly (a dependency): without it each answered 500
    with a traceback. An owner gets each figure; another owner's study stays 404."""
    bob = world.bob
    with (
        _signed_in(world.api, world.api.token("alice")) as alice,
        world.api.client("bob") as owner,
    ):
        for plot in PLOTS:
            drawn = owner.get(f"/api/studies/{bob.study_id}/plot/{plot}")
            assert drawn.status_code == 200, (plot, drawn.text)
            assert "data" in drawn.json(), plot  # a plotly figure
            assert alice.get(f"/api/studies/{bob.study_id}/plot/{plot}").status_code == 404


def test_artifacts_are_served_only_through_their_own_study(world: World) -> None:
    """optuna-dashboard finds a trial's artifact by trial id alone; the study must match, and
    the artifact must be one a worker recorded for that trial."""
    mine, other, bob = world.alice, world.alice_other, world.bob
    with _signed_in(world.api, world.api.token("alice")) as alice:
        own = alice.get(f"/artifacts/{mine.study_id}/{mine.trial_id}/{mine.artifact_id}")
        assert own.status_code == 200 and own.content == mine.artifact_bytes
        refused = [
            # in her trial's attributes, but no worker recorded it; the service keeps no
            # study-level artifacts
            f"/artifacts/{mine.study_id}/{mine.trial_id}/{mine.unrecorded_artifact_id}",
            f"/artifacts/{mine.study_id}/{mine.study_artifact_id}",
            # alice's own artifact through her other study's path
            f"/artifacts/{other.study_id}/{mine.trial_id}/{mine.artifact_id}",
            f"/artifacts/{other.study_id}/{mine.study_artifact_id}",
            # bob's, with the right trial and artifact ids, through alice's study
            f"/artifacts/{mine.study_id}/{bob.trial_id}/{bob.artifact_id}",
            f"/artifacts/{mine.study_id}/{bob.study_artifact_id}",
            # alice's trial id with bob's artifact
            f"/artifacts/{mine.study_id}/{mine.trial_id}/{bob.artifact_id}",
        ]
        assert {path: alice.get(path).status_code for path in refused} == dict.fromkeys(
            refused, 404
        )


def _snapshot(settings: Settings) -> tuple[Any, ...]:
    """Everything the dashboard could change: Optuna's studies and trials, artifact files."""
    storage = make_storage(settings)
    try:
        studies = storage.get_all_studies()
        trials = [storage.get_all_trials(s._study_id) for s in studies]
    finally:
        storage.engine.dispose()
    return studies, trials, sorted(p.name for p in settings.artifact_dir.iterdir())


def test_dashboard_writes_are_403_and_change_nothing(world: World) -> None:
    s, t, a = world.alice.study_id, world.alice.running_trial_id, world.alice.artifact_id
    file = {"file": "data:text/plain;base64,eA==", "filename": "x.txt"}
    writes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/api/studies", {"study_name": "new", "directions": ["minimize"]}),
        ("POST", f"/api/studies/{s}/rename", {"study_name": "renamed"}),
        ("DELETE", f"/api/studies/{s}", None),
        ("DELETE", f"/api/studies/{world.bob.study_id}", None),
        ("POST", f"/api/trials/{t}/tell", {"state": "Fail"}),
        ("POST", f"/api/trials/{t}/user-attrs", {"user_attrs": {"k": "v"}}),
        ("PUT", f"/api/studies/{s}/note", {"version": 1, "body": "note"}),
        ("PUT", f"/api/studies/{s}/{t}/note", {"version": 1, "body": "note"}),
        ("POST", f"/api/studies/{s}/{t}/skip", None),
        ("POST", f"/api/studies/{s}/preference", {"mode": "ChooseWorst", "clicked": 0}),
        ("PUT", f"/api/studies/{s}/preference_feedback_component", {"output_type": "note"}),
        ("POST", f"/api/artifacts/{s}/{t}", file),
        ("POST", f"/api/artifacts/{s}", file),
        ("DELETE", f"/api/artifacts/{s}/{t}/{a}", None),
        ("DELETE", f"/api/artifacts/{s}/{world.alice.study_artifact_id}", None),
        ("POST", "/api/llm/trial_filter_query", {"user_query": "all"}),
        ("PATCH", f"/api/studies/{s}", {}),
        ("POST", "/dashboard", {}),
    ]
    before = _snapshot(world.api.settings)
    with (
        _signed_in(world.api, world.api.token("alice")) as alice,
        world.api.client("alice") as bearer,
        httpx.Client(base_url=world.api.base_url) as anonymous,
    ):
        answers = {
            (who, method, path): client.request(method, path, json=body)
            for who, client in (("cookie", alice), ("bearer", bearer), ("anonymous", anonymous))
            for method, path, body in writes
        }
    assert {k: r.status_code for k, r in answers.items()} == dict.fromkeys(answers, 403)
    assert all(r.json() == READ_ONLY for r in answers.values())
    assert _snapshot(world.api.settings) == before


def test_every_page_says_the_dashboard_is_read_only(pg_api: ApiServer) -> None:
    with _signed_in(pg_api, pg_api.token("alice")) as client:
        pages = [client.get(p) for p in ("/dashboard", "/dashboard/studies/1/trials")]
    for page in pages:
        assert page.status_code == 200, page.text
        assert dashboard.BANNER.decode() in page.text
        assert int(page.headers["content-length"]) == len(page.content)
        assert "script-src 'self'" in page.headers["content-security-policy"]


def test_auth_disabled_shows_the_local_owners_studies(
    pg_api: ApiServer, make_spec: SpecFactory
) -> None:
    with pg_api.client("alice") as alice:
        assert alice.post("/studies", json=make_spec("alice-a")).status_code == 201
    demo = pg_api.settings.model_copy(update={"auth": "disabled"})
    with ApiServer(demo) as local, httpx.Client(base_url=local.base_url) as anonymous:
        assert anonymous.post("/studies", json=make_spec("local-a")).status_code == 201
        assert _listed(anonymous) == ["local-a"]
        assert anonymous.get("/dashboard").status_code == 200


# The storage under the dashboard, called directly: what the routes above rely on.

WRITES: list[tuple[str, tuple[Any, ...]]] = [
    ("create_new_study", ([optuna.study.StudyDirection.MINIMIZE], "new")),
    ("delete_study", ("STUDY",)),
    ("set_study_user_attr", ("STUDY", "k", 1)),
    ("set_study_system_attr", ("STUDY", "k", 1)),
    ("create_new_trial", ("STUDY",)),
    ("set_trial_param", ("TRIAL", "x", 0.5, optuna.distributions.FloatDistribution(0, 1))),
    ("set_trial_state_values", ("TRIAL", optuna.trial.TrialState.FAIL)),
    ("set_trial_intermediate_value", ("TRIAL", 1, 0.5)),
    ("set_trial_user_attr", ("TRIAL", "k", 1)),
    ("set_trial_system_attr", ("TRIAL", "k", 1)),
]


@pytest.mark.parametrize(("method", "args"), WRITES, ids=[name for name, _ in WRITES])
def test_scoped_storage_refuses_every_write(
    world: World, storage: RDBStorage, method: str, args: tuple[Any, ...]
) -> None:
    scoped = OwnerScopedStorage(storage)
    ids = {"STUDY": world.alice.study_id, "TRIAL": world.alice.running_trial_id}
    with scoped.scoped(scoped.study_ids_of("alice")), pytest.raises(PermissionError):
        getattr(scoped, method)(*(ids.get(a, a) if isinstance(a, str) else a for a in args))


def test_scoped_storage_hides_other_owners_records(world: World, storage: RDBStorage) -> None:
    scoped = OwnerScopedStorage(storage)
    bob = world.bob
    assert scoped.get_all_studies() == []  # no scope: nothing (fail closed)
    with pytest.raises(KeyError):
        scoped.get_study_name_from_id(world.alice.study_id)
    with scoped.scoped(scoped.study_ids_of("alice")):
        assert [s.study_name for s in scoped.get_all_studies()] == ["alice-a", "alice-b"]
        assert len(scoped.get_all_trials(world.alice.study_id)) == 3
        assert set(scoped.get_trial(world.alice.trial_id).params) == {"x"}
        reads: dict[str, Callable[[], object]] = {
            "get_study_id_from_name": lambda: scoped.get_study_id_from_name(bob.name),
            "get_study_name_from_id": lambda: scoped.get_study_name_from_id(bob.study_id),
            "get_study_directions": lambda: scoped.get_study_directions(bob.study_id),
            "get_study_user_attrs": lambda: scoped.get_study_user_attrs(bob.study_id),
            "get_study_system_attrs": lambda: scoped.get_study_system_attrs(bob.study_id),
            "get_all_trials": lambda: scoped.get_all_trials(bob.study_id),
            "get_best_trial": lambda: scoped.get_best_trial(bob.study_id),
            "get_n_trials": lambda: scoped.get_n_trials(bob.study_id),
            "get_trial": lambda: scoped.get_trial(bob.trial_id),
            "get_trial_params": lambda: scoped.get_trial_params(bob.trial_id),
            "get_trial_system_attrs": lambda: scoped.get_trial_system_attrs(bob.trial_id),
            "get_trial_id_from_study_id_trial_number": (
                lambda: scoped.get_trial_id_from_study_id_trial_number(bob.study_id, 0)
            ),
        }
        assert [name for name, read in reads.items() if not _is_missing(read)] == []


def _is_missing(read: Callable[[], object]) -> bool:
    """Whether ``read`` answers as Optuna does for a record that does not exist."""
    try:
        read()
    except KeyError:
        return True
    return False
