"""Row 9: one owner's crowd of studies neither starves another owner nor slows the scan.

Real PostgreSQL, the real API for quotas, and the real worker loop's study choice: the crowd
is registered through ``hpo.core.studies`` (as the API does, without HTTP, to stay fast),
the other owner's study over HTTP; trials are cheap (no training) through the worker's
objective seam.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna
import pytest
from sqlalchemy import event

from hpo.core import fairshare
from hpo.core.db import Database, StudyRecord
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from hpo.core.storage import make_storage
from hpo.core.studies import create_study
from tests.conftest import ApiServer
from tests.specs import minimal_spec
from tests.worker_process import cheap_objective
from tests.workers import worker_env
from worker.loop import Worker

CROWD = 100  # the owner's studies; the scan's statements do not depend on it
# A claim's SQL: the scan, the study's record, Optuna's load of the study (a worker's first
# claim of it: 3) and ask (cache sync: 2; trial row: 4), the study's lock (2), the count
# under it, the served stamp (with the owner's running trials under a quota, whose lock
# adds 2) and the first heartbeat. Optuna's own ask is 17.
MAX_CLAIM_STATEMENTS = 18
SPACE = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}}


def spec(name: str, trials: int = 2) -> dict[str, Any]:
    return minimal_spec(name, space=SPACE, budget={"max_trials": trials})


def register(settings: Settings, owner: str, names: list[str]) -> None:
    storage = make_storage(settings)
    try:
        with Database(settings.database_url) as db, db.session() as session:
            for name in names:
                create_study(
                    session,
                    storage,
                    spec=StudySpec.model_validate(spec(name)),
                    owner=owner,
                    settings=settings,
                )
    finally:
        storage.engine.dispose()


def cheap_worker(settings: Settings, **kwargs: Any) -> Worker:
    return Worker(settings, cpu_threads=1, objective_factory=cheap_objective, **kwargs)


def owners_by_start(settings: Settings) -> list[tuple[str, str]]:
    """(owner, study) of every trial, in the order they started."""
    with Database(settings.database_url) as db, db.session() as session:
        owner_of = dict(session.query(StudyRecord.name, StudyRecord.owner).all())
    started = []
    for summary in optuna.get_all_study_summaries(settings.database_url):
        study = optuna.load_study(study_name=summary.study_name, storage=settings.database_url)
        started += [
            (t.datetime_start, owner_of[study.study_name], study.study_name)
            for t in study.get_trials(deepcopy=False)
        ]
    return [(owner, name) for _, owner, name in sorted(started)]


def test_a_crowd_of_studies_neither_starves_another_owner_nor_slows_the_scan(
    pg_settings: Settings,
) -> None:
    """``adversary`` (first by name, so ties favour it) has ``CROWD`` running studies; ``zoe``
    then registers one over HTTP: the scan is one or two statements, zoe's study is among
    the first two, and claims alternate between the owners."""
    settings = pg_settings.model_copy(update={"max_active_studies_per_owner": CROWD})
    register(settings, "adversary", [f"crowd-{i}" for i in range(CROWD)])
    with ApiServer(settings) as api, api.client("zoe") as zoe:
        assert zoe.post("/studies", json=spec("zoes-study", trials=4)).status_code == 201
    worker = cheap_worker(settings, max_trials=4)
    statements: list[str] = []
    listener = lambda _conn, _cursor, sql, *_: statements.append(sql)  # noqa: E731
    event.listen(worker.engine, "before_cursor_execute", listener)
    order = worker._scan()  # noqa: SLF001 - the study choice itself
    event.remove(worker.engine, "before_cursor_execute", listener)
    assert 1 <= len(statements) <= 2, statements
    assert len(order) == fairshare.FIRST_PAGE  # the order's head, not every study
    assert "zoes-study" in [load.name for load in order[:2]]

    assert worker.run(handle_signals=False) == 4
    owners = [owner for owner, _ in owners_by_start(settings)]
    assert owners == ["adversary", "zoe", "adversary", "zoe"]


class CountingWorker(Worker):
    """A worker that counts each claim's statements: from its look at the fair order to its
    trial running in the objective, in the thread that claims (not Optuna's heartbeat
    thread, which beats on its own clock)."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, objective_factory=self._counted, cpu_threads=1, **kwargs)
        self.statements: list[str] = []
        self.claims: list[list[str]] = []
        self.thread = threading.get_ident()
        event.listen(self.engine, "before_cursor_execute", self._note)

    def _note(self, _conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if threading.get_ident() == self.thread:
            self.statements.append(sql)

    def _run_next(self) -> bool:
        self.statements.clear()
        return super()._run_next()

    def _counted(self, ctx: Any, spec: StudySpec, *, record: StudyRecord, on_start: Any) -> Any:
        def started(trial: optuna.Trial) -> None:
            self.claims.append(list(self.statements))
            on_start(trial)

        return cheap_objective(ctx, spec, record=record, on_start=started)


@pytest.mark.parametrize("quota", [None, 2])
def test_a_claim_costs_a_few_statements_whatever_the_number_of_studies(
    pg_settings: Settings, quota: int | None
) -> None:
    """Each claim, the first of its study by this worker included, costs at most
    ``MAX_CLAIM_STATEMENTS``, with or without a running-trial quota; one of them reads the
    fair order, and no claim sweeps for stale trials when none are."""
    settings = pg_settings.model_copy(
        update={"max_active_studies_per_owner": CROWD, "max_running_trials_per_owner": quota}
    )
    register(settings, "adversary", [f"crowd-{i}" for i in range(CROWD)])
    register(settings, "zoe", ["zoes-study"])
    worker = CountingWorker(settings, max_trials=4)
    assert worker.run(handle_signals=False) == 4
    assert len(worker.claims) == 4
    for claim in worker.claims:
        assert len(claim) <= MAX_CLAIM_STATEMENTS, "\n".join(claim)
        assert sum("WITH busy AS" in sql for sql in claim) == 1, claim  # the scan, once
        assert not any("SELECT now()" in sql for sql in claim), claim  # Optuna's sweep


def test_running_trial_quota_holds_across_workers(pg_settings: Settings) -> None:
    """Worker A's trial of ``adversary`` is running; meanwhile worker B serves ``zoe`` and
    is refused another ``adversary`` trial, by the scan and by the claim gate itself."""
    settings = pg_settings.model_copy(update={"max_running_trials_per_owner": 1})
    register(settings, "adversary", ["crowd-0", "crowd-1"])
    register(settings, "zoe", ["zoes-study"])
    b = cheap_worker(settings)
    seen: dict[str, Any] = {}

    def probe(ctx: Any, spec: StudySpec, *, record: StudyRecord, on_start: Any) -> Any:
        inner = cheap_objective(ctx, spec, record=record, on_start=on_start)

        def objective(trial: optuna.Trial) -> float:
            if not seen:  # while A's first trial is RUNNING
                seen["b_order"] = [load.owner for load in b._scan()]  # noqa: SLF001
                seen["b_ran"] = b._run_next()  # noqa: SLF001
                with b.engine.connect() as conn:
                    loads = fairshare.scan(conn, grace_period=settings.grace_period).order
                other = next(s for s in loads if s.owner == record.owner and s.name != record.name)
                seen["other"] = other.name
                candidate = b._candidate(other)  # noqa: SLF001
                seen["gate"] = candidate is not None and b._run_one(candidate)  # noqa: SLF001
            return inner(trial)

        return objective

    a = Worker(settings, cpu_threads=1, objective_factory=probe, max_trials=1)
    assert a.run(handle_signals=False) == 1
    b.close()
    assert seen["b_order"] == ["zoe"]  # the scan leaves out an owner at the quota
    assert seen["b_ran"] is True
    assert seen["gate"] is False  # the claim gate refuses, counted under the owner's lock
    started = owners_by_start(settings)
    assert started[:2] == [("adversary", started[0][1]), ("zoe", "zoes-study")]
    assert ("adversary", seen["other"]) not in started


def test_study_quota_answers_429_naming_it(pg_settings: Settings) -> None:
    settings = pg_settings.model_copy(update={"max_active_studies_per_owner": 3})
    with ApiServer(settings) as api, api.client("mallory") as mallory:
        with ThreadPoolExecutor(8) as pool:  # concurrent registrations cannot all pass
            codes = list(
                pool.map(
                    lambda i: mallory.post("/studies", json=spec(f"m-{i}")).status_code, range(8)
                )
            )
        assert sorted(codes) == [201] * 3 + [429] * 5
        refused = mallory.post("/studies", json=spec("one-more"))
        assert refused.status_code == 429
        body = refused.json()
        assert body["quota"] == "max_active_studies_per_owner"
        assert body["limit"] == 3
        assert "HPO_MAX_ACTIVE_STUDIES_PER_OWNER" in body["detail"]
        with api.client("zoe") as zoe:  # another owner is not affected
            assert zoe.post("/studies", json=spec("zoes-study")).status_code == 201
        first = next(f"m-{i}" for i, code in enumerate(codes) if code == 201)
        assert mallory.post(f"/studies/{first}/stop").status_code == 200
        assert mallory.post("/studies", json=spec("one-more")).status_code == 201


def test_an_owner_weight_set_from_the_cli_reaches_the_scan(pg_settings: Settings) -> None:
    register(pg_settings, "zoe", ["zoes-study"])
    env = worker_env(pg_settings)
    hpo = [sys.executable, "-m", "hpo", "owner"]
    set_ = subprocess.run([*hpo, "weight", "zoe", "2.5"], env=env, capture_output=True, text=True)
    assert set_.returncode == 0, set_.stderr
    assert subprocess.run([*hpo, "weight", "zoe", "0"], env=env).returncode != 0
    listed = subprocess.run([*hpo, "list"], env=env, capture_output=True, text=True).stdout
    assert listed.split() == ["zoe", "2.5"]
    with Database(pg_settings.database_url) as db, db.engine.connect() as conn:
        [load] = fairshare.scan(conn, grace_period=pg_settings.grace_period).order
    assert (load.owner, load.weight) == ("zoe", 2.5)
