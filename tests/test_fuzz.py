"""Schemathesis against the service's own OpenAPI schema: no 5xx, every 4xx is JSON with detail.

Bounded: about 100 generated requests per operation, half valid by the schema and half not,
well over 1,000 in all, over real HTTP on loopback.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
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

            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
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
