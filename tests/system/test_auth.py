"""Bearer tokens: required everywhere but /healthz, hashed at rest, owners isolated."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from hpo.core.db import ApiToken, Database
from hpo.core.tokens import hash_token
from tests.conftest import ApiServer, SpecFactory

STUDY_ROUTES = [
    ("GET", "/studies"),
    ("POST", "/studies"),
    ("GET", "/studies/s1"),
    ("GET", "/studies/s1/trials"),
    ("GET", "/studies/s1/best"),
    ("GET", "/studies/s1/best/adapter"),
    ("GET", "/studies/s1/best/config"),
    ("GET", "/studies/s1/trials/0/tensorboard"),
    ("POST", "/studies/s1/trials"),
    ("POST", "/studies/s1/pause"),
    ("POST", "/studies/s1/resume"),
    ("POST", "/studies/s1/stop"),
    ("DELETE", "/studies/s1"),
]


def test_every_route_in_the_schema_is_covered(api: ApiServer) -> None:
    schema = httpx.get(f"{api.base_url}/openapi.json").json()
    documented = {
        (method.upper(), path.replace("{name}", "s1").replace("{number}", "0"))
        for path, ops in schema["paths"].items()
        for method in ops
    }
    assert documented - {("GET", "/healthz")} == set(STUDY_ROUTES)


@pytest.mark.parametrize(("method", "path"), STUDY_ROUTES)
def test_missing_or_wrong_token_is_401(api: ApiServer, method: str, path: str) -> None:
    with httpx.Client(base_url=api.base_url) as anonymous:
        response = anonymous.request(method, path, json={})
        assert response.status_code == 401
        assert response.json()["detail"].startswith("missing bearer token")
        wrong = anonymous.request(
            method, path, json={}, headers={"Authorization": "Bearer hpo_not-a-token"}
        )
        assert wrong.status_code == 401
        assert wrong.json()["detail"].startswith("invalid bearer token")


@pytest.mark.parametrize(("method", "path"), STUDY_ROUTES[2:])
def test_other_owners_get_404(
    api: ApiServer, client: httpx.Client, make_spec: SpecFactory, method: str, path: str
) -> None:
    assert client.post("/studies", json=make_spec("s1")).status_code == 201
    with api.client("mallory") as mallory:
        response = mallory.request(method, path, json={"params": {"lora_r": 8}})
        assert response.status_code == 404, response.text
        assert mallory.get("/studies").json() == {"data": [], "count": 0}
    assert client.get("/studies/s1").json()["status"] == "running"


def test_tokens_are_stored_hashed(api: ApiServer) -> None:
    token = api.token("carol")
    with Database(api.settings.database_url) as db, db.session() as session:
        rows = session.scalars(select(ApiToken).where(ApiToken.owner == "carol")).all()
        assert [r.token_hash for r in rows] == [hash_token(token)]
        assert all(token not in (r.token_hash, r.name) for r in rows)
