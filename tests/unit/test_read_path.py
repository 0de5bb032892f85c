"""The API's read path (issue 37): a GET of a study crosses to a thread once, validates a
stored spec once per process, and ``hpo serve --workers N`` splits the in-memory limits."""

from __future__ import annotations

import datetime as dt
import inspect
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from hpo.core.db import StudyRecord
from hpo.core.settings import Settings, per_process
from hpo.core.spec import StudySpec
from hpo.core.summary import stored_spec
from service.routes import studies
from tests.specs import minimal_spec


def _is_async(call: Any) -> bool:
    if inspect.isroutine(call):
        return inspect.iscoroutinefunction(call)
    return inspect.iscoroutinefunction(type(call).__call__)  # a callable instance: HTTPBearer


def _sync_dependencies(dependant: Dependant) -> list[str]:
    """Dependencies FastAPI would run in the threadpool, each a hop of its own."""
    found = []
    for dep in dependant.dependencies:
        if dep.call is not None and not _is_async(dep.call):
            found.append(getattr(dep.call, "__name__", repr(dep.call)))
        found += _sync_dependencies(dep)
    return found


def test_every_get_of_the_studies_api_runs_on_the_loop_but_for_its_one_hop() -> None:
    gets = [r for r in studies.router.routes if isinstance(r, APIRoute) and "GET" in r.methods]
    assert len(gets) == 7
    for route in gets:
        assert _is_async(route.endpoint), route.path
        assert _sync_dependencies(route.dependant) == [], route.path


def test_a_stored_spec_is_validated_once_per_study_row() -> None:
    created = dt.datetime(2026, 12, 8, tzinfo=dt.UTC)
    first = StudySpec.model_validate(minimal_spec("first"))
    row = StudyRecord(id=7, created_at=created, spec=first.model_dump(mode="json"))
    assert stored_spec(row) == first
    assert stored_spec(row) is stored_spec(row)
    # SQLite may give a deleted study's row id to the next one: another creation time, its spec
    second = StudySpec.model_validate(minimal_spec("second"))
    reused = StudyRecord(
        id=7, created_at=created + dt.timedelta(seconds=1), spec=second.model_dump(mode="json")
    )
    assert stored_spec(reused) == second


def test_each_process_takes_its_share_of_the_in_memory_limits() -> None:
    limits = {
        "api_concurrency": 15,
        "api_queue": 200,
        "auth_failures_per_minute": 30,
        "preflight_per_owner": 1,
        "preflight_threads": 16,
    }
    one = Settings(api_processes=1, **limits)
    assert per_process(one) == one
    shares = per_process(Settings(api_processes=2, **limits))
    assert {k: getattr(shares, k) for k in limits} == {
        "api_concurrency": 7,
        "api_queue": 100,
        "auth_failures_per_minute": 15,
        "preflight_per_owner": 1,  # never below one
        "preflight_threads": 8,
    }
