"""Coordination at scale: N worker processes run zero-cost trials against one PostgreSQL.

    python -m bench.coordination [--workers 4 16 64] [--sizes 1000 10000] [--trials 512]
    python -m bench.coordination --runs 1000:64 10000:16 --sides ours --train-s 5 --tag fleet

Each process is the real ``worker.loop.Worker`` (same storage settings, heartbeat, budget lock,
stale-trial sweep, sampler and pruner) whose objective trains nothing: it samples the study's
parameters and reports 20 intermediate values, calling ``should_prune`` after each, spread
over ``--train-s`` seconds of sleep (0: back to back; more: a fleet that mostly trains). The study
holds SIZE finished trials (20 intermediate values each) before the run starts. Baseline: the
same number of processes running a plain Optuna ask / report / tell loop with the same sampler
and pruner on a plain ``RDBStorage`` (no heartbeat, no budget lock). Each (size, N, side) runs
on a fresh copy of the pre-filled database. Writes bench/results/coordination.{md,json}.

Latencies exclude each process's first trial, which also loads the study into Optuna's
per-process trial cache (reported separately as "first claim"). PostgreSQL connections to the
run's database are sampled from ``pg_stat_activity`` while the workers run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import resource
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState, create_trial
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from bench import commit, machine, save
from hpo.core.db import StudyRecord
from hpo.core.factory import load_study, optuna_distributions, suggest_params
from hpo.core.migrate import upgrade
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from hpo.core.storage import make_storage
from hpo.core.studies import create_study
from tests.pg import PostgresCluster
from worker.loop import Worker
from worker.objective import WorkerContext

STEPS = 20
NAME = "coordination"


def _spec(max_trials: int) -> StudySpec:
    """The default study: the six core hyperparameters, the default sampler and pruner."""
    return StudySpec.model_validate(
        {
            "name": NAME,
            "train": {
                "model": {"name_or_path": "builtin:tiny-llama"},
                "dataset": {"path": "builtin:demo-text"},
            },
            "search": {"budget": {"max_trials": max_trials}},
        }
    )


def _loss(params: dict[str, Any]) -> float:
    """A smooth synthetic objective, so the sampler has something to model."""
    lr = math.log10(params.get("learning_rate", 1e-4))
    return 1.0 + (lr + 3.5) ** 2 + 0.01 * params.get("weight_decay", 0.0)


def _prefill(url: str, spec: StudySpec, count: int, seed: int) -> None:
    dists = optuna_distributions(spec.search)
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study = optuna.load_study(study_name=NAME, storage=RDBStorage(url))
    for _ in range(count):
        params = draws.ask(dists).params
        value = _loss(params)
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                params=params,
                distributions=dists,
                value=value,
                intermediate_values={(s + 1) * 64: value + 1 / (s + 1) for s in range(STEPS)},
            )
        )


def _parallel(target: Callable[..., None], argsets: list[tuple[Any, ...]]) -> None:
    """Forked processes: imports are shared, each opens its own connections."""
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=target, args=a) for a in argsets]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"{target.__name__} exited with {p.exitcode}")


# --- one process of a run ---------------------------------------------------------------------


def _report_curve(trial: optuna.Trial, value: float, reports: list[float], pause: float) -> bool:
    """Report STEPS points of a made-up curve ``pause`` seconds apart (training), timing each
    report + should_prune; True if the pruner stopped the trial."""
    for s in range(STEPS):
        time.sleep(pause)
        started = time.perf_counter()
        trial.report(value + 1 / (s + 1), (s + 1) * 64)
        pruned = trial.should_prune()
        reports.append(time.perf_counter() - started)
        if pruned:
            return True
    return False


def _zero_cost(
    reports: list[float], pause: float
) -> Callable[..., Callable[[optuna.Trial], float]]:
    def factory(
        ctx: WorkerContext,
        spec: StudySpec,
        *,
        record: StudyRecord,
        on_start: Callable[[optuna.Trial], None],
    ) -> Callable[[optuna.Trial], float]:
        def objective(trial: optuna.Trial) -> float:
            on_start(trial)
            value = _loss(suggest_params(trial, spec.search))
            if _report_curve(trial, value, reports, pause):
                raise optuna.TrialPruned()
            return value

        return objective

    return factory


class _Events(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.trials: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = json.loads(record.getMessage())
        if event["event"] == "trial_end":
            self.trials.append(
                {"claim": event["claim_s"], "tell": event["tell_s"], "end": time.time()}
            )


def _ours(url: str, out: str, pause: float) -> None:
    logger = logging.getLogger("hpo.worker")
    events = _Events()
    logger.addHandler(events)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    reports: list[float] = []
    settings = Settings(database_url=url, heartbeat_interval=10, grace_period=60)
    started = time.time()
    worker = Worker(
        settings,
        idle_exit=1.0,
        poll_interval=0.1,
        cpu_threads=1,
        objective_factory=_zero_cost(reports, pause),
    )
    worker.run(handle_signals=False)
    claims = [t["claim"] for t in events.trials]
    tells = [t["tell"] for t in events.trials]
    ends = [t["end"] for t in events.trials]
    _dump(out, started, claims, reports, tells, ends)


def _plain(url: str, out: str, n_trials: int, pause: float) -> None:
    spec = _spec(10**5)
    study = load_study(NAME, spec.search, RDBStorage(url))
    asks: list[float] = []
    reports: list[float] = []
    tells: list[float] = []
    ends: list[float] = []
    started = time.time()
    for _ in range(n_trials):
        t0 = time.perf_counter()
        trial = study.ask()
        asks.append(time.perf_counter() - t0)
        value = _loss(suggest_params(trial, spec.search))
        pruned = _report_curve(trial, value, reports, pause)
        state = TrialState.PRUNED if pruned else TrialState.COMPLETE
        t0 = time.perf_counter()
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        tells.append(time.perf_counter() - t0)
        ends.append(time.time())
    _dump(out, started, asks, reports, tells, ends)


def _dump(
    out: str,
    started: float,
    asks: list[float],
    reports: list[float],
    tells: list[float],
    ends: list[float],
) -> None:
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out).write_text(
        json.dumps(
            {
                "started": started,
                "ask": asks,
                "report": reports,
                "tell": tells,
                "ends": ends,
                "rss_mb": rss_mb,
                "private_mb": _private_mb(),
            }
        )
    )


def _private_mb() -> float:
    """Memory only this process holds (forked processes share the parent's imports)."""
    rollup = Path("/proc/self/smaps_rollup").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in rollup[1:])
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty")) / 1024


# --- runs -------------------------------------------------------------------------------------


def _ms(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q) * 1000) if values else None


class _Connections(threading.Thread):
    """Samples the number of server connections to one database until stopped."""

    def __init__(self, cluster: PostgresCluster, db: str) -> None:
        super().__init__(daemon=True)
        # Autocommit: pg_stat_activity is one snapshot per transaction.
        self.engine = create_engine(
            cluster.url("postgres"), poolclass=NullPool, isolation_level="AUTOCOMMIT"
        )
        self.db = db
        self.samples: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db")
        with self.engine.connect() as conn:
            while not self.done.wait(0.1):
                self.samples.append(conn.execute(query, {"db": self.db}).scalar_one())
        self.engine.dispose()

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.join()
        busy = [n for n in self.samples if n > 0]
        return {"peak": max(busy, default=0), "mean": float(np.mean(busy)) if busy else 0.0}


def _run(
    cluster: PostgresCluster,
    template: str,
    side: str,
    workers: int,
    trials: int,
    size: int,
    tmp: Path,
    train_s: float,
) -> dict[str, Any]:
    db = f"run_{side}_{workers}_{size}"
    _create_db(cluster, db, template)
    url = cluster.url(db)
    outs = [str(tmp / f"{db}-{i}.json") for i in range(workers)]
    connections = _Connections(cluster, db)
    connections.start()
    try:
        if side == "ours":
            _parallel(_ours, [(url, o, train_s / STEPS) for o in outs])
        else:
            share = [trials // workers + (i < trials % workers) for i in range(workers)]
            _parallel(
                _plain, [(url, o, n, train_s / STEPS) for o, n in zip(outs, share, strict=True)]
            )
    finally:
        conns = connections.stop()
    parts = [json.loads(Path(o).read_text()) for o in outs]
    first = [p["ask"][0] for p in parts if p["ask"]]
    ask = [a for p in parts for a in p["ask"][1:]]
    tell = [a for p in parts for a in p["tell"][1:]]
    report = [r for p in parts for r in p["report"]]
    ends = [e for p in parts for e in p["ends"]]
    begin = min(p["started"] for p in parts)
    storage = RDBStorage(url)
    study_id = storage.get_study_id_from_name(NAME)
    states = [t.state for t in storage.get_all_trials(study_id, deepcopy=False)]
    storage.engine.dispose()
    finished = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    return {
        "side": side,
        "workers": workers,
        "study_size": size,
        "new_trials": len(ends),
        "finished_in_db": finished,
        "running_left": sum(s == TrialState.RUNNING for s in states),
        "trials_per_s": len(ends) / (max(ends) - begin) if ends else 0.0,
        "first_claim_ms_median": _ms(first, 50),
        "peak_rss_mb_max": max(p["rss_mb"] for p in parts),
        "private_mb_max": max(p["private_mb"] for p in parts),
        "pg_connections": {**conns, "peak_per_worker": conns["peak"] / workers},
        "ask_ms": {"p50": _ms(ask, 50), "p99": _ms(ask, 99)},
        "report_ms": {"p50": _ms(report, 50), "p99": _ms(report, 99)},
        "tell_ms": {"p50": _ms(tell, 50), "p99": _ms(tell, 99)},
    }


def _create_db(cluster: PostgresCluster, name: str, template: str | None) -> None:
    admin = create_engine(cluster.url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        )
    admin.dispose()


def _build_template(
    cluster: PostgresCluster, name: str, base: str | None, spec: StudySpec, add: int
) -> None:
    """A database holding the study with ``add`` more finished trials than ``base``."""
    _create_db(cluster, name, base)
    url = cluster.url(name)
    if base is None:
        upgrade(url)
        storage = make_storage(Settings(database_url=url))
        with Session(storage.engine) as session:
            create_study(session, storage, spec=spec, owner="bench", settings=Settings())
        storage.engine.dispose()
    chunks = 4
    seeds = [zlib.crc32(f"{name}/{i}".encode()) for i in range(chunks)]  # 0 <= seed < 2**32
    _parallel(
        _prefill,
        [(url, spec, add // chunks + (i < add % chunks), seeds[i]) for i in range(chunks)],
    )


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Coordination at scale (zero-cost trials, PostgreSQL)",
        "",
        f"Commit `{meta['commit']}`, {meta['machine']}, PostgreSQL {meta['postgres']}, "
        f"(fsync and synchronous_commit off, as in the test cluster), {meta['trials']} new "
        f"trials per run, {STEPS} reports each over {meta.get('train_s', 0):g} s of 'training', "
        f"{meta['seconds']:.0f} s in all.",
        "All processes share the machine's cores with the database server: at 64 processes "
        "on 2 cores, latencies measure CPU queueing as much as coordination.",
        "",
        "`ours`: the real worker loop (budget lock + SQL count, stale sweep, heartbeat, "
        "sampler and pruner of the default spec). `plain`: Optuna ask/report/tell, same "
        "sampler and pruner, plain RDBStorage. ask = our claim (lock, budget check, stale "
        "sweep, ask) vs plain `study.ask()`. Percentiles leave out each process's first "
        "trial, whose ask loads the whole study into Optuna's per-process trial cache ('first "
        "claim'); trials/s counts from the first process start, so it includes that load.",
        "",
        "| study size | side | workers | trials/s | ask p50 ms | ask p99 ms | report+prune "
        "p50 ms | report+prune p99 ms | tell p50 ms | tell p99 ms | first claim ms | left "
        "RUNNING | peak RSS per process MB | private MB per process | PostgreSQL connections "
        "peak (mean) | peak connections per worker |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['study_size']} | {r['side']} | {r['workers']} | {r['error']} |" + " |" * 12
            )
            continue
        cells = [r["study_size"], r["side"], r["workers"], f"{r['trials_per_s']:.1f}"]
        for key in ("ask_ms", "report_ms", "tell_ms"):
            cells += [f"{r[key]['p50']:.1f}", f"{r[key]['p99']:.1f}"]
        rss, private = r.get("peak_rss_mb_max"), r.get("private_mb_max")
        conns = r.get("pg_connections")
        cells += [
            f"{r['first_claim_ms_median']:.0f}",
            r["running_left"],
            f"{rss:.0f}" if rss is not None else "-",
            f"{private:.0f}" if private is not None else "-",
            f"{conns['peak']} ({conns['mean']:.0f})" if conns else "-",
            f"{conns['peak_per_worker']:.2f}" if conns else "-",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--trials", type=int, default=512)
    parser.add_argument("--sides", nargs="+", default=["ours", "plain"])
    parser.add_argument(
        "--runs",
        nargs="+",
        metavar="SIZE:WORKERS",
        help="run these pairs instead of every size x workers",
    )
    parser.add_argument("--tag", help="write coordination-TAG.{md,json}")
    parser.add_argument(
        "--train-s",
        type=float,
        default=0.0,
        help="seconds each trial 'trains', spread over its reports",
    )
    args = parser.parse_args()
    pairs = (
        [tuple(int(x) for x in run.split(":")) for run in args.runs]
        if args.runs
        else [(size, w) for size in args.sizes for w in args.workers]
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.time()
    revision = commit()
    cluster = PostgresCluster()
    rows = []
    try:
        admin = create_engine(cluster.url())
        with admin.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
        admin.dispose()
        previous, have = None, 0
        with tempfile.TemporaryDirectory() as tmp:
            for size in sorted({size for size, _ in pairs}):
                template = f"size_{size}"
                spec = _spec(size + args.trials)
                _build_template(cluster, template, previous, spec, size - have)
                if previous is not None:  # the spec row still has the smaller budget
                    _set_budget(cluster.url(template), spec)
                previous, have = template, size
                for workers in [w for s, w in pairs if s == size]:
                    for side in args.sides:
                        try:
                            row = _run(
                                cluster,
                                template,
                                side,
                                workers,
                                args.trials,
                                size,
                                Path(tmp),
                                args.train_s,
                            )
                        except RuntimeError as exc:  # e.g. a process killed for memory
                            row = {
                                "side": side,
                                "workers": workers,
                                "study_size": size,
                                "error": str(exc),
                            }
                        print(json.dumps(row), flush=True)
                        rows.append(row)
    finally:
        cluster.stop()
    meta = {
        "commit": revision,
        "machine": machine(),
        "postgres": version,
        "trials": args.trials,
        "train_s": args.train_s,
        "seconds": time.time() - started,
    }
    name = f"coordination-{args.tag}" if args.tag else "coordination"
    save(name, {"meta": meta, "rows": rows}, _markdown(rows, meta))
    print(_markdown(rows, meta))


def _set_budget(url: str, spec: StudySpec) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE hpo_studies SET spec = :spec WHERE name = :name"),
            {"spec": json.dumps(spec.model_dump(mode="json")), "name": NAME},
        )
    engine.dispose()


if __name__ == "__main__":
    main()
