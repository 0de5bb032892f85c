"""Schemathesis against the service's own OpenAPI schema: no 5xx, every 4xx is JSON with detail.

Bounded: about 100 generated requests per operation, half valid by the schema and half not,
well over 1,000 in all, over real HTTP on loopback.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import ApiServer

pytestmark = pytest.mark.slow
EXAMPLES = 50  # per operation and generation mode


def test_generated_requests_never_get_a_5xx(pg_api: ApiServer) -> None:
    token = pg_api.token("fuzzer")
    schema = schemathesis.openapi.from_url(f"{pg_api.base_url}/openapi.json")
    sent: list[int] = []
    problems: list[str] = []

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
                response = case.call(headers=headers, timeout=30)
                sent.append(response.status_code)
                where = f"{case.method} {case.formatted_path} -> {response.status_code}"
                if response.status_code >= 500:
                    problems.append(f"{where}: {response.text[:200]}")
                elif response.status_code >= 400:
                    body = response.json()
                    if not isinstance(body, dict) or not body.get("detail"):
                        problems.append(f"{where}: no JSON detail: {response.text[:200]}")

            try:
                run()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # no inputs to get wrong (e.g. /healthz)

    assert not problems, problems[:10]
    assert len(sent) >= 1000
    assert any(400 <= s < 500 for s in sent) and any(s < 300 for s in sent)


def test_any_study_name_in_the_path_gets_a_4xx(pg_api: ApiServer) -> None:
    """Path parameters as an attacker writes them (NUL, unicode, encoded slashes, dots, long):
    every study route answers a JSON 4xx, never a 5xx."""
    token = pg_api.token("fuzzer")
    routes = [
        ("GET", "/studies/{}"),
        ("GET", "/studies/{}/trials"),
        ("GET", "/studies/{}/best"),
        ("GET", "/studies/{}/best/adapter"),
        ("POST", "/studies/{}/stop"),
        ("DELETE", "/studies/{}"),
    ]
    names = st.text(min_size=1, max_size=300) | st.sampled_from(
        ["\x00", "a\x00b", "..", "%2e%2e", "a/../b", "x" * 5000, "é", "\ud7ff", "%00"]
    )
    with httpx.Client(
        base_url=pg_api.base_url, timeout=30, headers={"Authorization": f"Bearer {token}"}
    ) as http:

        @settings(
            max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(route=st.sampled_from(routes), name=names)
        def run(route: tuple[str, str], name: str) -> None:
            method, template = route
            path = template.format(quote(name, safe=""))
            response = http.request(method, path)
            assert 400 <= response.status_code < 500, (method, path, response.status_code)
            assert response.json()["detail"]

        run()
