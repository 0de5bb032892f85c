"""What a worker's study choice costs with many studies registered: the fair-share scan.

    python -m bench.fair_share_scan [--studies 10000] [--owners 10] [--with-trials 200]

Starts its own PostgreSQL cluster; one owner registers ``--studies`` studies, ``--owners``
other owners one each; ``--with-trials`` of the crowd's studies get three finished trials and
one running trial. Then times ``fairshare.scan`` + ``fair_order`` (median of 7) and counts
their SQL statements. Rows go in through Optuna's storage API and our ORM, not the HTTP API
(whose registration cost is ``bench.noisy_neighbour``'s). Writes
bench/results/fair-share-scan.{md,json}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial
from sqlalchemy import event

from bench import commit, machine, save
from hpo.core import fairshare
from hpo.core.budget import trial_cap
from hpo.core.db import Database, StudyRecord, StudyStatus
from hpo.core.fairshare import StudyLoad
from hpo.core.migrate import upgrade
from hpo.core.spec import StudySpec
from tests.pg import PostgresCluster
from tests.specs import minimal_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _register(db: Database, storage: RDBStorage, names: list[tuple[str, str]]) -> list[int]:
    """Optuna studies and our records for ``(owner, name)`` pairs; their Optuna ids."""
    ids = []
    with db.sessions() as session:
        for owner, name in names:
            ids.append(storage.create_new_study([StudyDirection.MINIMIZE], name))
            spec = StudySpec.model_validate(minimal_spec(name=name))
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


def _add_trials(storage: RDBStorage, study_id: int) -> None:
    dist: dict[str, BaseDistribution] = {"learning_rate": FloatDistribution(1e-5, 1e-2, log=True)}
    for value in (1.0, 0.9, 0.8):
        storage.create_new_trial(
            study_id,
            template_trial=create_trial(
                state=TrialState.COMPLETE,
                value=value,
                params={"learning_rate": 1e-3},
                distributions=dist,
            ),
        )
    trial_id = storage.create_new_trial(study_id)
    storage.record_heartbeat(trial_id)


@dataclass(frozen=True)
class StudyChoice:
    """What ``repeats`` study choices (scan + fair order) cost, and the last order."""

    order: list[StudyLoad]
    rows: int
    statements: int
    times: list[float]


def time_study_choice(db: Database, *, grace_period: float, repeats: int) -> StudyChoice:
    """Time a worker's study choice ``repeats`` times, counting one choice's SQL statements."""
    statements: list[str] = []
    event.listen(
        db.engine, "before_cursor_execute", lambda _c, _k, sql, *_: statements.append(sql)
    )
    times: list[float] = []
    order: list[StudyLoad] = []
    rows = 0
    for _ in range(repeats):
        statements.clear()
        began = time.perf_counter()
        with db.engine.connect() as conn:
            loads = fairshare.scan(conn, grace_period=grace_period)
        order = fairshare.fair_order(loads)
        times.append(time.perf_counter() - began)
        rows = len(loads)
    return StudyChoice(order=order, rows=rows, statements=len(statements), times=times)


def run(*, crowd: int, owners: int, with_trials: int) -> dict[str, Any]:
    cluster = PostgresCluster()
    try:
        url = cluster.url()
        upgrade(url)
        storage = RDBStorage(url, heartbeat_interval=60)
        started = time.perf_counter()
        with Database(url) as db:
            crowd_ids: list[int] = []
            for start in range(0, crowd, 500):
                batch = [("crowd", f"crowd-{i}") for i in range(start, min(crowd, start + 500))]
                crowd_ids += _register(db, storage, batch)
            _register(db, storage, [(f"owner-{k}", f"study-{k}") for k in range(owners)])
            for study_id in crowd_ids[:with_trials]:
                _add_trials(storage, study_id)
            setup_s = time.perf_counter() - started
            choice = time_study_choice(db, grace_period=120, repeats=7)
        storage.engine.dispose()
    finally:
        cluster.stop()
    order = choice.order
    first_other = next((i + 1 for i, s in enumerate(order) if s.owner != "crowd"), None)
    return {
        "studies": crowd + owners,
        "crowd": crowd,
        "owners": owners + 1,
        "with_trials": with_trials,
        "setup_s": setup_s,
        "statements": choice.statements,
        "rows": choice.rows,
        "median_ms": statistics.median(choice.times) * 1000,
        "max_ms": max(choice.times) * 1000,
        "last_other_owner_place": max(
            (i + 1 for i, s in enumerate(order) if s.owner != "crowd"), default=None
        ),
        "first_other_owner_place": first_other,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--owners", type=int, default=10)
    parser.add_argument("--with-trials", type=int, default=200)
    args = parser.parse_args()
    result = run(crowd=args.studies, owners=args.owners, with_trials=args.with_trials)
    result["commit"] = commit()
    result["machine"] = machine("loopback", "PostgreSQL 15")
    lines = [
        "# Fair-share scan",
        "",
        f"Commit `{result['commit']}`, {result['machine']}. One owner holds {result['crowd']} "
        f"running studies ({result['with_trials']} of them with 3 finished trials and one "
        f"running), {args.owners} other owners one study each.",
        "",
        "| studies | SQL statements | rows returned | median ms (of 7) | max ms |",
        "|---|---|---|---|---|",
        f"| {result['studies']} | {result['statements']} | {result['rows']} | "
        f"{result['median_ms']:.0f} | {result['max_ms']:.0f} |",
        "",
        f"The other owners' studies sit at places {result['first_other_owner_place']} to "
        f"{result['last_other_owner_place']} of the workers' order.",
    ]
    save("fair-share-scan", result, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
