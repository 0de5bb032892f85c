"""What a worker's claim costs as running studies grow, beside a plain Optuna ``ask``.

    python -m bench.fair_share_scan [--sizes 10 1000 10000] [--claims 15] [--running 20]

For each size, its own PostgreSQL cluster: one owner registers ``size`` running studies, 10
other owners one each; ``--running`` of the crowd's studies have a trial running (the busy
part of the fleet, fresh heartbeats) and 200 have three finished trials. Then, round by
round over the sizes side by side (the shared machine's load weighs on each alike), a real
worker claims (from its look at the fair order to its trial running in the
objective; a cheap objective, no training, and the trial finishes before the next claim)
and a plain Optuna ``ask`` (with ``tell``) runs on one of the crowd's studies, ``--claims``
times each: medians, and the SQL statements of each, counted in the claiming thread with a
``before_cursor_execute`` event (not Optuna's heartbeat thread). Rows go in through Optuna's
storage API and our ORM, not the HTTP API. Claims mostly find studies new to the worker
(Optuna loads each); the ask reuses one loaded study. Writes
bench/results/fair-share-scan.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial
from sqlalchemy import Engine, event

from bench import commit, machine, save
from hpo.core import fairshare
from hpo.core.budget import trial_cap
from hpo.core.db import Database, StudyRecord, StudyStatus
from hpo.core.fairshare import StudyLoad
from hpo.core.migrate import upgrade
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from tests.pg import PostgresCluster
from tests.specs import minimal_spec
from tests.worker_process import cheap_objective
from worker.loop import Worker

optuna.logging.set_verbosity(optuna.logging.WARNING)
OTHER_OWNERS = 10
WITH_HISTORY = 200


def _register(db: Database, storage: RDBStorage, names: list[tuple[str, str]]) -> list[int]:
    """Optuna studies and our records for ``(owner, name)`` pairs; their Optuna ids."""
    ids = []
    with db.sessions() as session:
        for owner, name in names:
            ids.append(storage.create_new_study([StudyDirection.MINIMIZE], name))
            spec = StudySpec.model_validate(minimal_spec(name, budget={"max_trials": 1000}))
            session.add(
                StudyRecord(
                    name=name,
                    owner=owner,
                    spec=spec.model_dump(mode="json"),
                    status=StudyStatus.RUNNING,
                    trial_cap=trial_cap(spec.search),
                )
            )
        session.commit()
    return ids


def _history(storage: RDBStorage, study_id: int) -> None:
    dist: dict[str, BaseDistribution] = {"learning_rate": FloatDistribution(1e-5, 1e-2, log=True)}
    for value in (1.0, 0.9, 0.8):
        done = create_trial(
            state=TrialState.COMPLETE,
            value=value,
            params={"learning_rate": 1e-3},
            distributions=dist,
        )
        storage.create_new_trial(study_id, template_trial=done)


class Counter:
    """The statements an engine runs in the thread that made the counter."""

    def __init__(self, engine: Engine) -> None:
        self.thread = threading.get_ident()
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._note)

    def _note(self, *_: Any) -> None:
        self.count += threading.get_ident() == self.thread


class ClaimingWorker(Worker):
    """A worker that notes each claim's latency and statements, up to its trial's start."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, cpu_threads=1, objective_factory=self._noted)
        self.counter = Counter(self.engine)
        self.claims: list[tuple[float, int]] = []
        self._began = (0.0, 0)

    def _run_next(self) -> bool:
        self._began = (time.perf_counter(), self.counter.count)
        return super()._run_next()

    def _noted(self, ctx: Any, spec: StudySpec, *, record: StudyRecord, on_start: Any) -> Any:
        def started(trial: optuna.Trial) -> None:
            began, count = self._began
            self.claims.append((time.perf_counter() - began, self.counter.count - count))
            on_start(trial)

        return cheap_objective(ctx, spec, record=record, on_start=started)


@dataclass(frozen=True)
class StudyChoice:
    """What ``repeats`` looks at the fair order's head cost, and the last head."""

    order: list[StudyLoad]
    statements: int
    times: list[float]


def time_study_choice(db: Database, *, grace_period: float, repeats: int) -> StudyChoice:
    """Time a worker's look at the fair order ``repeats`` times, counting its statements."""
    counter = Counter(db.engine)
    times: list[float] = []
    order: list[StudyLoad] = []
    for _ in range(repeats):
        count, began = counter.count, time.perf_counter()
        with db.engine.connect() as conn:
            order = fairshare.scan(conn, grace_period=grace_period).order
        times.append(time.perf_counter() - began)
    return StudyChoice(order=order, statements=counter.count - count, times=times)


def _median(samples: list[tuple[float, int]]) -> tuple[float, int]:
    return (
        statistics.median(s for s, _ in samples) * 1000,
        int(statistics.median(n for _, n in samples)),
    )


def _asks(url: str, name: str) -> Callable[[], tuple[float, int]]:
    storage = RDBStorage(url)
    counter = Counter(storage.engine)
    study = optuna.load_study(study_name=name, storage=storage)

    def ask() -> tuple[float, int]:
        count, began = counter.count, time.perf_counter()
        trial = study.ask()
        took = time.perf_counter() - began, counter.count - count
        study.tell(trial, 1.0)
        return took

    return ask


@dataclass
class Fleet:
    """One size's database, its claiming worker and a plain Optuna ``ask`` beside it."""

    size: int
    cluster: PostgresCluster
    worker: ClaimingWorker
    ask: Callable[[], tuple[float, int]]
    asks: list[tuple[float, int]]


def setup(size: int, *, running: int) -> Fleet:
    cluster = PostgresCluster()
    url = cluster.url()
    upgrade(url)
    storage = RDBStorage(url)
    with Database(url) as db:
        crowd: list[int] = []
        for start in range(0, size, 500):
            batch = [("crowd", f"crowd-{i}") for i in range(start, min(size, start + 500))]
            crowd += _register(db, storage, batch)
        _register(db, storage, [(f"owner-{k}", f"study-{k}") for k in range(OTHER_OWNERS)])
    for study_id in crowd[:WITH_HISTORY]:
        _history(storage, study_id)
    for study_id in crowd[-running:]:
        storage.record_heartbeat(storage.create_new_trial(study_id))
    storage.engine.dispose()
    settings = Settings(database_url=url, cache_dir=Path(tempfile.mkdtemp()), grace_period=3600)
    return Fleet(size, cluster, ClaimingWorker(settings), _asks(url, "crowd-0"), [])


def figures(fleet: Fleet) -> dict[str, Any]:
    claim_ms, claim_sql = _median(fleet.worker.claims)
    ask_ms, ask_sql = _median(fleet.asks)
    return {
        "running_studies": fleet.size + OTHER_OWNERS,
        "claim_ms": claim_ms,
        "claim_statements": claim_sql,
        "claim_statements_max": max(n for _, n in fleet.worker.claims),
        "ask_ms": ask_ms,
        "ask_statements": ask_sql,
    }


def run(sizes: list[int], *, claims: int, running: int) -> list[dict[str, Any]]:
    """Every size's fleet side by side, claims and asks interleaved round by round, so the
    shared machine's load weighs on each size alike."""
    fleets: list[Fleet] = []
    try:
        for size in sizes:
            fleets.append(setup(size, running=running))
        for _ in range(claims):
            for fleet in fleets:
                assert fleet.worker._run_next()  # noqa: SLF001 - one claim, as the loop makes it
                fleet.asks.append(fleet.ask())
        return [figures(fleet) for fleet in fleets]
    finally:
        for fleet in fleets:
            fleet.worker.close()
            fleet.cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 10_000])
    parser.add_argument("--claims", type=int, default=15)
    parser.add_argument("--running", type=int, default=20)
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = run(args.sizes, claims=args.claims, running=args.running)
    load_after = os.getloadavg()
    result = {
        "commit": commit(),
        "machine": machine("loopback", "PostgreSQL 15"),
        "load_before": load_before,
        "load_after": load_after,
        "claims": args.claims,
        "running_trials": args.running,
        "rows": rows,
    }
    first, last = rows[0], rows[-1]
    lines = [
        "# A claim's cost as running studies grow",
        "",
        f"Commit `{result['commit']}`, {result['machine']}, shared (`nice -n 10`; load "
        f"average {load_before[0]:.1f} before, {load_after[0]:.1f} after). One owner holds "
        f"all but {OTHER_OWNERS} of the running studies, {OTHER_OWNERS} other owners one "
        f"each; {args.running} trials run meanwhile. Medians of {args.claims} claims and "
        f"{args.claims} plain Optuna asks on the same database, interleaved, the sizes "
        "side by side (each round claims and asks once on every size).",
        "",
        "| running studies | claim ms | statements per claim (median / max) | Optuna ask ms "
        "| statements per ask | claim / ask |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['running_studies']:,} | {r['claim_ms']:.1f} | {r['claim_statements']} / "
            f"{r['claim_statements_max']} | {r['ask_ms']:.1f} | {r['ask_statements']} | "
            f"{r['claim_ms'] / r['ask_ms']:.2f}x |"
            for r in rows
        ),
        "",
        f"From {first['running_studies']:,} to {last['running_studies']:,} running studies a "
        f"claim goes from {first['claim_ms']:.1f} to {last['claim_ms']:.1f} ms "
        f"({last['claim_ms'] / first['claim_ms']:.2f}x).",
    ]
    save("fair-share-scan", result, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
