"""A hostile tenant against the API: `hpo serve` as deployed (its uvicorn settings, no trusted
proxy), on PostgreSQL, with small limits so that each bound is reached quickly.

Rows of issue 20: a registration whose files block (3), failed tokens from rotating
X-Forwarded-For (7), a flood of reads (8), static assets without Accept-Encoding (11),
cross-origin sign-in and sign-out (13), the public API schema (14), stalled headers and bodies
(15); and a read that must not write (issue 21).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import optuna_dashboard
import pytest
from sqlalchemy import select, update

from hpo.core.db import Database, StudyRecord
from tests.conftest import TEMPLATE, new_pg_database
from tests.specs import minimal_spec
from tests.system.hostile.serving import Serve, serving

CONCURRENCY = 3  # requests served at once, and each pool's connections
FAILURES = 5  # failed token checks per address per minute


@pytest.fixture(scope="module")
def serve(
    pg_admin_url: str, pg_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Serve]:
    """One `hpo serve` process for the module, started as an operator would."""
    url = new_pg_database(pg_admin_url, template=TEMPLATE)
    with serving(
        url,
        tmp_path_factory.mktemp("hostile-api"),
        HPO_AUTH_FAILURES_PER_MINUTE=str(FAILURES),
        HPO_API_CONCURRENCY=str(CONCURRENCY),
        HPO_API_QUEUE="10",
        HPO_API_QUEUE_TIMEOUT_S="1",
        HPO_PREFLIGHT_TIMEOUT_S="2",
        HPO_API_HEADER_TIMEOUT_S="2",
        HPO_API_BODY_TIMEOUT_S="1",
        HPO_API_ANONYMOUS_TIMEOUT_S="1",
    ) as server:
        yield server


def _is_json_error(response: httpx.Response) -> bool:
    return response.headers["content-type"] == "application/json" and "detail" in response.json()


def test_a_registration_whose_files_block_stalls_no_one_else(serve: Serve) -> None:
    """Row 3: dataset_info.json is a FIFO. Whether the check refuses it at once or runs into its
    deadline, it holds no pooled connection: health and another owner's reads answer meanwhile
    and after, with every pooled connection (CONCURRENCY of them) asked for at once."""
    folder = serve.data / "fifo-dataset"
    folder.mkdir()
    os.mkfifo(folder / "dataset_info.json")
    specs = [minimal_spec(f"fifo-{i}", dataset={"path": str(folder)}) for i in range(12)]
    with serve.client("mallory") as mallory, serve.client("alice") as alice:
        alice.post("/studies", json=minimal_spec("alice-study")).raise_for_status()

        def others_are_served() -> None:
            assert httpx.get(f"{serve.base_url}/healthz", timeout=60).status_code == 200
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                reads = list(pool.map(lambda _: alice.get("/studies"), range(CONCURRENCY)))
            assert [r.status_code for r in reads] == [200] * CONCURRENCY
            assert [s["name"] for s in reads[0].json()["data"]] == ["alice-study"]

        with ThreadPoolExecutor(len(specs)) as pool:
            answers = [pool.submit(mallory.post, "/studies", json=spec) for spec in specs]
            while not all(a.done() for a in answers):
                others_are_served()
            statuses = [a.result().status_code for a in answers]
        others_are_served()
    assert set(statuses) <= {422, 429}, statuses
    assert all(_is_json_error(a.result()) for a in answers)
    assert 422 in statuses


def test_failed_token_limit_counts_failures_only_and_ignores_forwarded_for(
    serve: Serve,
) -> None:
    """Row 7: no trusted proxy, so X-Forwarded-For names no client; a valid token passes even
    from an address over the limit."""
    bad = httpx.Client(base_url=serve.base_url, timeout=60)
    with bad:
        statuses = [
            bad.get(
                "/studies",
                headers={"Authorization": "Bearer hpo_wrong", "X-Forwarded-For": f"10.0.0.{i}"},
            ).status_code
            for i in range(3 * FAILURES)
        ]
        assert statuses[:FAILURES] == [401] * FAILURES
        assert set(statuses[FAILURES:]) == {429}
        good = bad.get(
            "/studies",
            headers={
                "Authorization": f"Bearer {serve.token('alice')}",
                "X-Forwarded-For": "10.0.0.1",
            },
        )
        assert good.status_code == 200
        still = bad.get("/studies", headers={"Authorization": "Bearer hpo_wrong"})
        assert still.status_code == 429 and int(still.headers["Retry-After"]) > 0


def test_a_flood_of_reads_is_shed_with_503_never_500(serve: Serve) -> None:
    """Row 8: 300 reads, 100 at a time, against CONCURRENCY turns: each is served or shed."""
    with serve.client("bob") as bob:
        bob.post("/studies", json=minimal_spec("bob-study")).raise_for_status()
        limits = httpx.Limits(max_connections=100)
        with (
            # A connection each: a kept-alive one may close on its idle timeout just as a
            # client, slow on a busy host, sends on it; that race is HTTP's, not the API's.
            httpx.Client(
                base_url=serve.base_url,
                headers={**bob.headers, "Connection": "close"},
                timeout=60,
                limits=limits,
            ) as flood,
            ThreadPoolExecutor(100) as pool,
        ):
            answers = list(pool.map(lambda _: flood.get("/studies/bob-study"), range(300)))
        statuses = {r.status_code for r in answers}
        assert statuses <= {200, 503}, statuses
        assert 200 in statuses
        shed = [r for r in answers if r.status_code == 503]
        assert all(_is_json_error(r) and int(r.headers["Retry-After"]) > 0 for r in shed)
        assert bob.get("/studies/bob-study").status_code == 200


def test_static_assets_are_served_without_accept_encoding(serve: Serve) -> None:
    """Row 11: optuna-dashboard's asset route indexes Accept-Encoding without a default."""
    asset = Path(optuna_dashboard.__file__).parent / "public" / "bundle.js.LICENSE.txt"
    with serve.client("alice") as alice:
        del alice.headers["accept-encoding"]
        response = alice.get(f"/static/{asset.name}")
    assert response.status_code == 200
    assert response.content == asset.read_bytes()


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://attacker.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Referer": "https://attacker.example/form.html"},
    ],
    ids=["origin", "null-origin", "fetch-site", "referer"],
)
def test_cross_origin_login_and_logout_are_refused(serve: Serve, headers: dict[str, str]) -> None:
    """Row 13: a foreign page can neither sign a browser in as its author nor sign it out."""
    with httpx.Client(base_url=serve.base_url, timeout=60) as browser:
        token = serve.token("mallory")
        login = browser.post("/login", data={"token": token}, headers=headers)
        assert login.status_code == 403 and _is_json_error(login)
        assert "set-cookie" not in login.headers
        logout = browser.post("/logout", headers=headers)
        assert logout.status_code == 403 and _is_json_error(logout)
        assert "set-cookie" not in logout.headers
        own = {"Origin": serve.base_url, "Sec-Fetch-Site": "same-origin"}
        assert browser.post("/login", data={"token": token}, headers=own).status_code == 303
        assert browser.post("/logout", headers=own).status_code == 303


def test_the_api_schema_is_public_and_nothing_else_is(serve: Serve) -> None:
    """Row 14: /docs, /redoc and /openapi.json are public by decision (README, Security model):
    they describe the routes, the same for everyone, and hold no owner's data."""
    with httpx.Client(base_url=serve.base_url, timeout=60) as anonymous:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert anonymous.get(path).status_code == 200, path
        schema = anonymous.get("/openapi.json").json()
        for path in ("/studies", "/api/studies", "/static/bundle.js.LICENSE.txt"):
            assert anonymous.get(path).status_code == 401, path
    assert "/studies/{name}" in schema["paths"]


def _stalled_header(base_url: str) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    return sock


def _answer_to_slow_body(serve: Serve, authorization: bytes) -> bytes:
    """What the API answers a POST whose body never arrives in full."""
    with socket.create_connection(serve.address, timeout=60) as sock:
        sock.sendall(
            b"POST /studies HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + authorization
            + b"Content-Length: 1000\r\n\r\n"
            + b'{"name": "slow'
        )
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def test_stalled_headers_and_bodies_are_cut_off(serve: Serve) -> None:
    """Row 15: connections that never finish their headers are closed by the server; a body
    that never arrives is answered 408, an owner's and one without a token alike (each under
    its own deadline). The proxy's own limits are README's."""
    sockets = [_stalled_header(serve.base_url) for _ in range(50)]
    try:
        # recv returns b"" once the server closes; a socket timeout (60 s) would raise instead.
        assert all(s.recv(1024) == b"" for s in sockets)
    finally:
        for s in sockets:
            s.close()
    owners = f"Authorization: Bearer {serve.token('alice')}\r\n".encode()
    for authorization in (owners, b""):
        answer = _answer_to_slow_body(serve, authorization)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"detail"' in answer
    assert httpx.get(f"{serve.base_url}/healthz", timeout=60).status_code == 200


def test_reading_a_study_never_writes_its_status(serve: Serve) -> None:
    """Issue 21 item 5: a study whose time budget ran out while no worker watched stays as it is
    on GET; the lifecycle route that looks at the budget settles it."""
    with serve.client("carol") as carol:
        spec = minimal_spec("carol-study", budget={"timeout_s": 60})
        carol.post("/studies", json=spec).raise_for_status()
        with Database(serve.database_url) as db, db.session() as session:
            session.execute(
                update(StudyRecord)
                .where(StudyRecord.name == "carol-study")
                .values(created_at=StudyRecord.created_at - dt.timedelta(hours=2))
            )
        before = _row(serve, "carol-study")
        assert carol.get("/studies/carol-study").json()["status"] == "running"
        assert _row(serve, "carol-study") == before
        assert carol.post("/studies/carol-study/pause").json()["status"] == "paused"
        resumed = carol.post("/studies/carol-study/resume").json()
    assert (resumed["status"], resumed["status_reason"]) == ("completed", "timeout_s=60.0 reached")


def _row(serve: Serve, name: str) -> tuple[object, ...]:
    with Database(serve.database_url) as db, db.session() as session:
        record = session.scalars(select(StudyRecord).where(StudyRecord.name == name)).one()
        return (record.status, record.status_reason, record.updated_at)
