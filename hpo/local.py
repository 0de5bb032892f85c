"""``hpo run`` and ``hpo demo``: one study on this machine, no server and no token.

The study is registered on the embedded default (SQLite in the working folder) or on
``HPO_DATABASE_URL``, and N local worker processes (``python -m hpo.local``, the CPU threads
split between them) run its trials while a live table shows progress. Running the same spec
again continues its study. Ctrl-C stops the workers, which re-queue their running trials.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import optuna
import yaml
from rich.console import Console
from rich.live import Live

from hpo.core import records
from hpo.core.artifacts import recorded
from hpo.core.budget import max_trials
from hpo.core.db import Database, StudyRecord, StudyStatus
from hpo.core.errors import StudyConflict, StudyNotFound
from hpo.core.export import best_configuration
from hpo.core.migrate import upgrade
from hpo.core.optuna_tables import trial_id
from hpo.core.progress import best_ties, best_trial, saturation_note
from hpo.core.schedulers import dispatch
from hpo.core.schemas import TrialPublic
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from hpo.core.storage import make_storage
from hpo.core.studies import create_study, get_study
from hpo.core.tally import Tally, tally
from hpo.live import ProgressPipes, progress_view
from hpo.report import write_report

# A worker with nothing left to run exits after this long; the run ends when all have.
IDLE_EXIT_S = 5.0
OWNER = "local"  # whom the service serves with HPO_AUTH=disabled: its dashboard shows them


@dataclass
class RunResult:
    study: str
    metric: str
    database_url: str
    artifact_dir: Path
    tally: Tally
    interrupted: bool
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] | None = None
    # what to say when the best value is shared (the metric saturated), else None
    saturated: str | None = None
    adapter: Path | None = None
    config_file: Path | None = None
    report: Path | None = None


def local_settings(workdir: Path, database_url: str | None) -> Settings:
    """The environment's settings, with the database and adapters in ``workdir`` unless
    ``database_url`` / ``HPO_DATABASE_URL`` / ``HPO_ARTIFACT_DIR`` say otherwise.

    A spec may point anywhere on this machine (relative paths from the working folder):
    the roots are an operator's bound on a shared service's tenants, and one machine's user
    has no operator. ``HPO_DATA_ROOTS`` / ``HPO_MODEL_ROOTS``, when set, still apply."""
    base = Settings()
    url = database_url or os.environ.get("HPO_DATABASE_URL") or f"sqlite:///{workdir / 'hpo.db'}"
    artifacts = base.artifact_dir if "HPO_ARTIFACT_DIR" in os.environ else workdir / "artifacts"
    anywhere = [Path("/")]
    return base.model_copy(
        update={
            "database_url": Settings(database_url=url).database_url,
            "artifact_dir": artifacts.resolve(),
            "auth": "disabled",
            "data_roots": base.data_roots if "HPO_DATA_ROOTS" in os.environ else anywhere,
            "model_roots": base.model_roots if "HPO_MODEL_ROOTS" in os.environ else anywhere,
        }
    )


def hpo_command() -> str:
    """How to call ``hpo`` from a shell as things are: plain ``hpo`` when that is this one on
    the PATH, else its full path (a virtualenv that is not activated)."""
    here = Path(sys.executable).parent / "hpo"
    on_path = shutil.which("hpo")
    if on_path is not None and (not here.exists() or Path(on_path).resolve() == here.resolve()):
        return "hpo"
    return str(here) if here.exists() else f"{sys.executable} -m hpo"


def _register(
    db: Database, storage: Any, spec: StudySpec, settings: Settings
) -> tuple[StudyRecord, bool]:
    """The study of this spec, and whether an earlier run registered it."""
    with db.session() as session:
        try:
            record = get_study(session, name=spec.name, owner=None)
        except StudyNotFound:
            created = create_study(session, storage, spec=spec, owner=OWNER, settings=settings)
            session.expunge(created)
            return created, False
        if record.spec != spec.model_dump(mode="json"):
            raise StudyConflict(
                f"a study named {spec.name!r} already exists in this database with another "
                "spec; give this spec another name to start a new study"
            )
        session.expunge(record)
        return record, True


class _Workers:
    """N ``python -m hpo.local`` processes; a signal to us is passed on to them."""

    def __init__(self, name: str, settings: Settings, workdir: Path, n: int, device: str) -> None:
        env = dict(
            os.environ,
            HPO_DATABASE_URL=settings.database_url,  # not on the command line: `ps` shows it
            HPO_ARTIFACT_DIR=str(settings.artifact_dir),
            HPO_CACHE_DIR=str(settings.cache_dir),
            # a worker checks the spec's paths again, against the same roots
            HPO_DATA_ROOTS=json.dumps([str(root) for root in settings.data_roots]),
            HPO_MODEL_ROOTS=json.dumps([str(root) for root in settings.model_roots]),
        )
        threads = max(1, (os.cpu_count() or 1) // n) if device == "cpu" else 1
        self.stopping = threading.Event()
        self.pipes = ProgressPipes()
        self.procs = []
        for i in range(n):
            read, write = os.pipe()  # the worker's progress reports (worker.liveness)
            argv = [sys.executable, "-m", "hpo.local", name, device, str(threads), str(write)]
            with (workdir / f"worker-{i}.log").open("ab") as log:
                try:
                    self.procs.append(
                        subprocess.Popen(
                            argv,
                            env=env,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            pass_fds=(write,),
                        )
                    )
                finally:
                    os.close(write)  # the worker's end: the reader sees EOF when it exits
            self.pipes.follow(read)

    def alive(self) -> int:
        return sum(p.poll() is None for p in self.procs)

    def stop(self, signum: int, _frame: FrameType | None = None) -> None:
        self.stopping.set()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # the worker re-queues its running trial

    def wait(self) -> None:
        for p in self.procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_study(
    spec: StudySpec,
    *,
    workdir: Path,
    workers: int,
    device: str,
    console: Console,
    database_url: str | None = None,
) -> RunResult:
    """Register (or continue) ``spec``'s study and run it with local workers until its budget
    is spent or a signal stops it."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    settings = local_settings(workdir, database_url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    upgrade(settings.database_url)
    storage = make_storage(settings)
    db = Database(settings.database_url)
    try:
        record, existed = _register(db, storage, spec, settings)
        study_id = storage.get_study_id_from_name(spec.name)
        total = max_trials(spec.search)
        metric = spec.search.objective.metric
        before = study_tally(storage, study_id, spec)
        # soft_wrap: a path broken over two lines cannot be copied
        verb = "continuing" if existed else "study"
        console.print(
            f"{verb} {spec.name} · {before.budget_line()} done · {workdir}",
            soft_wrap=True,
            markup=False,
        )
        interrupted = False
        if record.status == StudyStatus.RUNNING:
            interrupted = _watch(
                spec.name,
                metric,
                total,
                dispatch.scheduled(spec.search),
                storage,
                study_id,
                settings,
                workdir,
                workers=workers,
                device=device,
                console=console,
            )
        else:
            console.print(f"study {spec.name} is {record.status}: nothing to run")
        return _result(spec, settings, db, storage, record.id, study_id, workdir, interrupted)
    finally:
        db.close()
        storage.engine.dispose()


def _watch(
    name: str,
    metric: str,
    total: int,
    scheduled: bool,
    storage: Any,
    study_id: int,
    settings: Settings,
    workdir: Path,
    *,
    workers: int,
    device: str,
    console: Console,
) -> bool:
    """Start the workers and show progress until they have all exited; True if stopped."""
    plural = "s" if workers != 1 else ""
    console.print(
        f"starting {workers} {device.upper() if device == 'cpu' else device} worker{plural} "
        "(the first trial builds the model and the data)..."
    )
    pool = _Workers(name, settings, workdir, workers, device)
    previous = {sig: signal.signal(sig, pool.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    try:
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                trials = storage.get_all_trials(study_id, deepcopy=False)
                best = best_trial(storage, study_id)
                alive = pool.alive()
                live.update(
                    progress_view(
                        name,
                        metric,
                        tally(trials, budget=total, scheduled=scheduled),
                        trials,
                        best.value if best else None,
                        elapsed=time.monotonic() - started,
                        alive=alive,
                        workers=workers,
                        pipes=pool.pipes,
                    )
                )
                if not alive:
                    break
                if pool.stopping.is_set():
                    # a worker still starting up when the first signal came can outlive it
                    # (seen: one went on to run the whole budget), so repeat until all exit
                    pool.stop(signal.SIGINT)
                time.sleep(0.5)  # a signal runs its handler during the sleep
        console.print()
    finally:
        if pool.alive():  # we are leaving on an error: do not leave workers behind
            pool.stop(signal.SIGINT)
        pool.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return pool.stopping.is_set()


def study_tally(storage: Any, study_id: int, spec: StudySpec) -> Tally:
    """The study's trials counted against its budget (``hpo.core.tally``)."""
    trials = storage.get_all_trials(study_id, deepcopy=False)
    return tally(trials, budget=max_trials(spec.search), scheduled=dispatch.scheduled(spec.search))


def _result(
    spec: StudySpec,
    settings: Settings,
    db: Database,
    storage: Any,
    record_id: int,
    study_id: int,
    workdir: Path,
    interrupted: bool,
) -> RunResult:
    result = RunResult(
        study=spec.name,
        metric=spec.search.objective.metric,
        database_url=settings.database_url,
        artifact_dir=settings.artifact_dir,
        tally=study_tally(storage, study_id, spec),
        interrupted=interrupted,
    )
    best = best_trial(storage, study_id)
    if best is None:
        return result
    result.best_number, result.best_value = best.number, best.value
    result.best_params = best.params
    if best.value is not None:  # a COMPLETE trial's: always
        ties = best_ties(storage, study_id)
        tie_break = spec.search.objective.tie_break
        result.saturated = saturation_note(result.metric, best.value, ties, tie_break)
    with db.session() as session:
        stored = recorded(session, study_id=record_id, trial_id=trial_id(best))
        result.adapter = settings.artifact_dir / stored.artifact_id if stored else None
    result.config_file = workdir / f"{spec.name}-best.yaml"
    config = best_configuration(spec, best)
    result.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    trials = [TrialPublic.of(t) for t in storage.get_all_trials(study_id, deepcopy=False)]
    baseline = records.baseline(storage.get_study_user_attrs(study_id)).get(result.metric)
    result.report = write_report(
        spec,
        trials,
        workdir / f"{spec.name}-report.html",
        best=TrialPublic.of(best),
        baseline=baseline,
    )
    return result


def _worker_main(name: str, device: str, threads: str, report_fd: str) -> None:
    """A local worker of ``hpo run``: settings from the environment, this one study only."""
    from hpo.cli import log_to_stderr
    from hpo.core.migrate import check_database

    settings = Settings()
    check_database(settings.database_url)
    log_to_stderr()
    from worker.loop import Worker  # torch: only in the worker processes

    Worker(
        settings,
        device=device,
        studies=[name],
        idle_exit=IDLE_EXIT_S,
        cpu_threads=int(threads),
        report_fd=int(report_fd),
    ).run()


if __name__ == "__main__":
    _worker_main(*sys.argv[1:])
