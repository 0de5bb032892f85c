"""The worker process: pick a running study with budget left, run one trial, repeat."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.exceptions import ExperimentalWarning, StorageInternalError
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial
from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from hpo.core import budget, fairshare, fleet, records
from hpo.core.db import Database, StudyRecord, StudyStatus
from hpo.core.errors import StorageUnavailable
from hpo.core.factory import load_study
from hpo.core.fairshare import StudyLoad
from hpo.core.optuna_tables import study_id, trial_id
from hpo.core.progress import TrialCounts
from hpo.core.schedulers import Decision, Idle, Start, dispatch
from hpo.core.schedulers.dispatch import scheduled
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from hpo.core.storage import ClaimGate, make_storage
from worker import liveness, outcomes
from worker.data import DataCache
from worker.liveness import STALLED, Liveness, TrialStalled, phase_timeouts
from worker.locks import OwnerLock, StudyLock
from worker.models import AdapterCache, ModelCache
from worker.objective import ObjectiveFactory, WorkerContext, make_objective

INFRA_ERRORS = (SQLAlchemyError, StorageInternalError, StorageUnavailable)
MAX_BACKOFF_S = 30.0
GONE_REASON = "the study was deleted or renamed; this worker goes on with the others"


class BudgetSpent(Exception):
    """Raised inside the budget gate: the study had no free slot when this worker claimed."""


class NoWorkNow(BudgetSpent):
    """Raised as a scheduled study's claim begins: its scheduler says to wait, or it is done."""


class OwnerAtQuota(BudgetSpent):
    """Raised inside the budget gate: the study's owner has their quota of running trials."""


class StudyGone(Exception):
    """The study was deleted (or renamed) while this worker polled or trained it."""


def root_cause(exc: BaseException) -> BaseException:
    """The first error of a chain: when Optuna's ``tell`` fails, its cleanup raises again
    (``UnboundLocalError``), hiding what happened (the database error, the deleted study)."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return exc


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


@dataclass
class Candidate:
    record: StudyRecord
    spec: StudySpec
    study: optuna.Study


@dataclass
class _Claim:
    """A trial's claim as it happens: which trial, and the coordination latencies logged with
    it: claim = stale sweep + ask (cache sync, budget gate, trial row; Optuna samples lazily,
    inside the objective), tell = from the objective's return until stored."""

    begin: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    returned: float = 0.0
    trial_id: int | None = None
    number: int | None = None

    def latency(self) -> dict[str, float]:
        return {
            "claim_s": self.started - self.begin,
            "tell_s": time.perf_counter() - self.returned,
        }


class Worker:
    """One process per device. ``run()`` returns the number of trials it ran."""

    def __init__(
        self,
        settings: Settings,
        *,
        device: str = "cpu",
        studies: list[str] | None = None,
        max_trials: int | None = None,
        idle_exit: float | None = None,
        poll_interval: float = 1.0,
        cpu_threads: int | None = None,
        objective_factory: ObjectiveFactory = make_objective,
        report_fd: int | None = None,
    ) -> None:
        """``report_fd``: the pipe that tells a supervisor of the trials' progress."""
        self.settings = settings
        self.study_names = studies
        self.max_trials = max_trials
        self.idle_exit = idle_exit
        self.poll_interval = poll_interval
        # Our tables and Optuna's share one pool. The main thread holds two connections at
        # once at most (the study lock beside a claim; a session beside a storage write), the
        # heartbeat thread one, and most of the time only one is in use: keeping just one open
        # makes a fleet of N workers hold about N PostgreSQL connections, not 2N
        # (bench/results/coordination-fleet-*.md), and the overflow means no thread waits.
        self.storage = make_storage(settings, pool_size=1, max_overflow=2)
        self.engine = self.storage.engine
        self.sessions = Database(self.engine).sessions
        self.objective_factory = objective_factory
        torch_device = torch.device(device)
        hostname = socket.gethostname()
        # A supervised worker is named after its supervisor's process too: what people see.
        pids = f"{os.getppid()}-{os.getpid()}" if report_fd is not None else str(os.getpid())
        self.liveness = Liveness(phase_timeouts(settings), report_fd=report_fd)
        self.ctx = WorkerContext(
            settings=settings,
            device=torch_device,
            worker_id=f"{hostname}-{pids}-{uuid.uuid4().hex[:4]}",
            hostname=hostname,
            models=ModelCache(
                device=torch_device,
                cache_dir=settings.cache_dir,
                trust_remote_code=settings.allow_trust_remote_code,
                gguf_max_items=settings.gguf_max_items,
            ),
            data=DataCache(
                settings.cache_dir,
                prepare_timeout=settings.prepare_timeout,
                max_row_bytes=settings.max_row_bytes,
            ),
            adapters=AdapterCache(settings),
            storage=self.storage,
            sessions=self.sessions,
        )
        self.trials_run = 0
        # One Study (and sampler) per study for the worker's life: a sampler rebuilt for
        # every trial would restart its random stream and propose the same configs again.
        self._optuna_studies: dict[tuple[int, str], optuna.Study] = {}
        self._specs: dict[tuple[int, str], StudySpec] = {}
        self._owners_at_quota: set[str] = set()
        self._idle_row = False  # this worker said it is free (``hpo.core.fleet``)
        self._seed_offset = zlib.crc32(self.ctx.worker_id.encode())
        if cpu_threads is not None:
            torch.set_num_threads(cpu_threads)

    # --- the loop ---------------------------------------------------------------------------

    def run(self, *, handle_signals: bool = True) -> int:
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.ctx.stop.set())
            self.liveness.watch()  # signals: only in the main thread
        liveness.use(self.liveness)
        idle_since = time.monotonic()
        failures = 0
        waiting = False
        self._event("worker_start", device=str(self.ctx.device))
        while not self.ctx.stop.is_set():
            if self.max_trials is not None and self.trials_run >= self.max_trials:
                break
            wait = self.poll_interval
            try:
                ran = self._run_next()
                failures = 0
            except Exception as exc:  # no study and no database outage may end the worker
                ran = False
                failures += 1
                wait = min(MAX_BACKOFF_S, 0.5 * 2**failures)
                kind = "database_unavailable" if isinstance(exc, INFRA_ERRORS) else "worker_error"
                self._event(kind, error=describe(root_cause(exc)), retry_in=wait)
            if ran:
                idle_since = time.monotonic()
                waiting = False
                continue
            self._seen_idle()
            if not waiting:  # once per idle spell: a silent worker looks stuck
                waiting = True
                self._event(
                    "waiting",
                    studies=self.study_names or "all running",
                    reason="no trial to run now",
                )
            # Idle also while failing: a worker told to leave when idle leaves a lost database.
            if self.idle_exit is not None and time.monotonic() - idle_since > self.idle_exit:
                break
            self.ctx.stop.wait(wait)
        self._event("worker_exit", trials=self.trials_run)
        liveness.use(None)
        self.liveness.close()
        self.close()
        return self.trials_run

    def close(self) -> None:
        if self._idle_row:
            with contextlib.suppress(*INFRA_ERRORS), self.engine.begin() as conn:
                fleet.gone(conn, worker_id=self.ctx.worker_id)
        self.storage.remove_session()
        self.engine.dispose()

    def _seen_idle(self) -> None:
        """Say this worker is free, so that a full fleet is not preempted while it waits. A
        worker pinned to some studies serves no one else: it never counts as free."""
        if self.study_names is not None:
            return
        with contextlib.suppress(*INFRA_ERRORS), self.engine.begin() as conn:
            fleet.seen_idle(
                conn,
                worker_id=self.ctx.worker_id,
                hostname=self.ctx.hostname,
                poll_s=self.poll_interval,
            )
            self._idle_row = True

    def _run_next(self) -> bool:
        """Try the studies in fair order, reading further down it (8 times more each time)
        only when the first have no work for this worker."""
        self._owners_at_quota = set()
        tried: set[int] = set()
        limit = fairshare.FIRST_PAGE
        while True:
            order = self._scan(limit)
            for load in order:
                if load.record_id in tried or load.owner in self._owners_at_quota:
                    continue
                tried.add(load.record_id)
                try:
                    candidate = self._candidate(load)
                except StudyGone:
                    self._forget_load(load)
                    continue
                if candidate is not None and self._run_one(candidate):
                    return True
            if len(order) < limit:
                return False
            limit *= 8  # the first had no work for this worker: read further

    # --- choosing a study -------------------------------------------------------------------

    def _scan(self, limit: int = fairshare.FIRST_PAGE) -> list[StudyLoad]:
        """The first ``limit`` studies in fair order (``hpo.core.fairshare``): one statement,
        plus a sweep and one more only where it flags trials of a dead worker."""
        found = self._fair_share(limit)
        for load in found.swept():
            try:
                _, study = self._study(load, load.record)
            except StudyGone:
                continue
            with warnings.catch_warnings():  # experimental in Optuna; we rely on it on purpose
                warnings.simplefilter("ignore", ExperimentalWarning)
                fail_stale_trials(study)  # trials of dead workers free their budget slot
        return self._fair_share(limit).order if found.swept() else found.order

    def _fleet_cap(self, conn: Connection) -> int:
        """An owner's share of the live fleet, this worker (free: it is looking) included."""
        live = fleet.live(conn, besides=self.ctx.worker_id)
        return fleet.owner_cap(live.running + live.free + 1, share=self.settings.max_fleet_share)

    def _fair_share(self, limit: int) -> fairshare.Scan:
        with self.engine.connect() as conn:
            return fairshare.scan(
                conn,
                grace_period=self.settings.grace_period,
                limit=limit,
                max_running_per_owner=self.settings.max_running_trials_per_owner
                or self._fleet_cap(conn),
                names=self.study_names,
            )

    def _study(self, load: StudyLoad, record: StudyRecord) -> tuple[StudySpec, optuna.Study]:
        """The spec and the worker's Study of a scanned study, both kept for its life."""
        key = (load.record_id, load.name)
        spec = self._specs.get(key) or StudySpec.model_validate(record.spec)
        self._specs[key] = spec
        study = self._optuna_studies.get(key)
        if study is None or study_id(study) != load.optuna_id:
            try:
                study = load_study(
                    spec.name, spec.search, self.storage, seed_offset=self._seed_offset
                )
            except KeyError:
                raise StudyGone(load.name) from None
            self._optuna_studies[key] = study
        return spec, study

    def _candidate(self, load: StudyLoad) -> Candidate | None:
        """A closer look at a scanned study: its budget (a scheduled study's next work is
        decided once, as a worker claims: ``_claim_gate``)."""
        record = load.record  # as the scan read it just now
        if record.status != StudyStatus.RUNNING:
            return None
        spec, study = self._study(load, record)
        # The scan's (finished: complete, pruned and paused); a claim recounts under its lock.
        counts = TrialCounts(complete=load.finished, running=load.running, waiting=load.waiting)
        # A scheduled study's one decision per claim is taken under its lock (_claim_gate).
        if budget.spent_reason(self.storage, record, spec, counts, None) is not None:
            outcomes.finish_if_spent(self.ctx, record, study)
            return None
        limit = budget.max_trials(spec.search)
        has_work = scheduled(spec.search) or counts.finished + counts.running < limit
        return Candidate(record, spec, study) if has_work else None

    def _forget_load(self, load: StudyLoad) -> None:
        self._specs.pop((load.record_id, load.name), None)
        self._optuna_studies.pop((load.record_id, load.name), None)
        self._event("study_gone", study=load.name, abandoned_trial=None, reason=GONE_REASON)

    @contextmanager
    def _owner_quota(
        self, candidate: Candidate, lock: StudyLock, *, counted: bool = False
    ) -> Iterator[None]:
        """Inside the study's lock: stamp the study served (``fairshare.served``); refuse the
        claim if the owner is at ``max_running_trials_per_owner`` (counted under the owner's
        lock, held until claimed) or, ``counted``, if the study's budget is taken. One
        statement stamps and counts; a refusal rolls the stamp back."""
        limit = self.settings.max_running_trials_per_owner
        owner = candidate.record.owner
        quota = OwnerLock(self.engine, owner, lock.connection) if limit is not None else None
        with quota or nullcontext():
            with (
                nullcontext(lock.connection) if lock.connection else self.engine.connect() as conn
            ):
                served = fairshare.served(
                    conn,
                    candidate.record.id,
                    optuna_id=study_id(candidate.study) if counted else None,
                    owner=owner if limit is not None else None,
                )
                refusal: BudgetSpent | None = None
                if limit is not None and (served.owner_running or 0) >= limit:
                    self._owners_at_quota.add(owner)
                    refusal = OwnerAtQuota(owner)
                elif served.taken is not None and served.taken >= budget.max_trials(
                    candidate.spec.search
                ):
                    refusal = BudgetSpent(candidate.spec.name)
                if refusal is not None:
                    conn.rollback()
                    raise refusal
                conn.commit()
            yield

    def _decide(self, candidate: Candidate, trials: list[FrozenTrial]) -> Decision:
        """The scheduler's say on a scheduled study's next work: once per claim."""
        search = candidate.spec.search
        seed = dispatch.decision_seed(search, candidate.record.id)
        return dispatch.decide(
            trials,
            search,
            max_trials=budget.max_trials(search),
            seed=seed,
            created_at=candidate.record.created_at,
        )

    def _study_exists(self, study: optuna.Study, record: StudyRecord) -> bool:
        try:
            return self.storage.get_study_id_from_name(record.name) == study_id(study)
        except KeyError:
            return False

    def _forget(self, record: StudyRecord, *, trial: int | None) -> None:
        """Drop a deleted study from this worker's cache; abandon its trial, if one ran."""
        self._optuna_studies.pop((record.id, record.name), None)
        self._event(
            "study_gone",
            study=record.name,
            abandoned_trial=trial,
            reason=GONE_REASON,
        )

    # --- one trial --------------------------------------------------------------------------

    @contextmanager
    def _claim_gate(self, candidate: Candidate) -> Iterator[ClaimGate]:
        """The gate for a trial's claim; ``NoWorkNow`` when a scheduled study has none.

        A scheduled study's claim takes ONE decision, under the study's lock (none while a
        trial is queued: that is claimed first). A continuation it picks is enqueued, and the
        lock is held until the trial is claimed, so exactly one worker continues a paused
        configuration and the new configuration it says to start is the one claimed."""
        if not scheduled(candidate.spec.search):
            yield lambda queued: self._budget_gate(candidate, queued)
            return
        with StudyLock(self.engine, candidate.record.id) as lock:
            trials = self.storage.get_all_trials(study_id(candidate.study), deepcopy=False)
            decision = None if dispatch.waiting(trials) else self._decide(candidate, trials)
            if isinstance(decision, Idle):
                lock.release()
                if decision.done:
                    outcomes.finish_if_spent(self.ctx, candidate.record, candidate.study)
                raise NoWorkNow(candidate.spec.name)
            if decision is not None and not isinstance(decision, Start):
                queued = dispatch.continuation(decision, trials)
                candidate.study.enqueue_trial(queued.params, user_attrs=queued.attrs)
                self._event("segment_queued", study=candidate.spec.name, **queued.attrs)
            yield lambda queued: self._scheduled_gate(candidate, queued, lock, decision)

    @contextmanager
    def _budget_gate(self, candidate: Candidate, queued: int | None) -> Iterator[dict[str, Any]]:
        """Held around a trial's claim (``queued``: the id of a WAITING one): count, then
        RUNNING, under the study's lock, so the count every worker sees includes every
        claimed trial."""
        with (
            StudyLock(self.engine, candidate.record.id) as lock,
            self._owner_quota(candidate, lock, counted=True),
        ):
            yield {}

    @contextmanager
    def _scheduled_gate(
        self, candidate: Candidate, queued: int | None, lock: StudyLock, decision: Decision | None
    ) -> Iterator[dict[str, Any]]:
        """A scheduled study's claim, under the lock its decision was taken in (released once
        claimed): a queued segment was decided on already, a queued configuration runs as a
        user asked, and a new one starts as the decision says; a configuration's first
        segment gets its attributes in the same critical section."""
        search = candidate.spec.search
        try:
            with self._owner_quota(candidate, lock):
                if queued is not None and not dispatch.starts_configuration(
                    self.storage.get_trial(queued)
                ):
                    yield {}
                    return
                start = None
                if queued is None:
                    if not isinstance(decision, Start):
                        raise BudgetSpent(candidate.spec.name)
                    start = decision
                trials = self.storage.get_all_trials(study_id(candidate.study), deepcopy=False)
                yield dispatch.first_segment_attrs(trials, search, start)
        finally:
            lock.release()

    def _run_one(self, candidate: Candidate) -> bool:
        claim = _Claim()
        objective = self._objective(candidate, claim)
        try:
            # swept: the scan just swept the studies it found stale, so Optuna need not.
            with self._claim_gate(candidate) as gate, self.storage.claiming(gate, swept=True):
                candidate.study.optimize(objective, n_trials=1, catch=(Exception,))
        except BudgetSpent:
            return False
        except Exception as exc:
            # Optuna's own bookkeeping failed: `tell` with the database down, or the study
            # deleted under the trial. A trial left RUNNING loses its heartbeat and is failed
            # and retried after the grace period.
            cause = root_cause(exc)
            if not self._study_exists(candidate.study, candidate.record):
                self._forget(candidate.record, trial=claim.number)
                # A trial that ran is work done: the idle timer restarts from its end.
                return claim.trial_id is not None
            if not self._database_reachable():
                raise StorageUnavailable(
                    f"database lost during a trial: {describe(cause)}"
                ) from exc
            raise
        if claim.trial_id is None:
            return False
        self.trials_run += 1
        latency = claim.latency()
        try:
            trial = self.storage.get_trial(claim.trial_id)
        except KeyError:
            self._forget(candidate.record, trial=claim.number)
            return True
        outcomes.trial_ended(
            self.ctx, candidate.record, candidate.spec, candidate.study, trial, latency
        )
        return True

    def _objective(self, candidate: Candidate, claim: _Claim) -> Callable[[optuna.Trial], float]:
        """The study's objective under the liveness watch, noting the claim as it happens."""
        spec = candidate.spec

        def on_start(trial: optuna.Trial) -> None:
            claim.started = time.perf_counter()
            if self._idle_row:  # busy now: no longer a free worker
                with self.engine.begin() as conn:
                    fleet.gone(conn, worker_id=self.ctx.worker_id)
                self._idle_row = False
            claim.trial_id, claim.number = trial_id(trial), trial.number
            self._event(
                "trial_start",
                study=spec.name,
                trial=trial.number,
                continues=records.continues(trial),
                until=records.until(trial),
            )

        objective = self.objective_factory(
            self.ctx, spec, record=candidate.record, on_start=on_start
        )

        def timed(trial: optuna.Trial) -> float:
            try:
                # The step check stops a training trial at its limit; this bounds what cannot
                # stop at a step (a decode trial, a long evaluation), a grace period later.
                limit = budget.trial_seconds(spec, self.settings) + self.settings.grace_period
                with self.liveness.trial(trial_id(trial), max_seconds=limit):
                    return objective(trial)
            except TrialStalled:
                records.record_failure(trial, reason=STALLED)
                raise
            finally:
                claim.returned = time.perf_counter()

        return timed

    def _database_reachable(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    def _event(self, event: str, **fields: Any) -> None:
        self.ctx.event(event, **fields)
