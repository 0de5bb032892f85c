"""The worker process: pick a running study with budget left, run one trial, repeat."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import time
import uuid
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.exceptions import ExperimentalWarning, StorageInternalError
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState, create_trial
from sqlalchemy import select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from hpo.db import StudyRecord, StudyStatus, session_scope, utcnow
from hpo.errors import StorageUnavailable
from hpo.factory import load_study, optuna_distributions
from hpo.progress import (
    INFEASIBLE_RECORD_ATTR,
    TrialCounts,
    is_record,
    trial_counts,
    user_attr_sum,
)
from hpo.settings import Settings
from hpo.spec import StudySpec
from hpo.storage import RETRIED_FROM_ATTR, make_storage
from worker.data import DataCache
from worker.locks import StudyLock
from worker.models import ModelCache
from worker.objective import ObjectiveFactory, WorkerContext, make_objective

log = logging.getLogger("hpo.worker")
INFRA_ERRORS = (SQLAlchemyError, StorageInternalError, StorageUnavailable)


class BudgetSpent(Exception):
    """Raised inside the budget gate: the study had no free slot when this worker claimed."""


@dataclass
class Candidate:
    record: StudyRecord
    spec: StudySpec
    study: optuna.Study
    counts: TrialCounts


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
    ) -> None:
        self.settings = settings
        self.studies = studies
        self.max_trials = max_trials
        self.idle_exit = idle_exit
        self.poll_interval = poll_interval
        self.storage = make_storage(settings)
        # Our tables and Optuna's share one bounded pool: per worker, at most the study lock,
        # a trial's reads and writes, and the heartbeat thread hold a connection at once.
        self.engine = self.storage.engine
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.objective_factory = objective_factory
        torch_device = torch.device(device)
        hostname = socket.gethostname()
        self.ctx = WorkerContext(
            settings=settings,
            device=torch_device,
            worker_id=f"{hostname}-{os.getpid()}-{uuid.uuid4().hex[:4]}",
            hostname=hostname,
            models=ModelCache(
                device=torch_device,
                cache_dir=settings.cache_dir,
                trust_remote_code=settings.allow_trust_remote_code,
            ),
            data=DataCache(settings.cache_dir),
        )
        self.trials_run = 0
        # One Study (and sampler) per study for the worker's life: a sampler rebuilt for
        # every trial would restart its random stream and propose the same configs again.
        self._studies: dict[tuple[int, str], optuna.Study] = {}
        self._seed_offset = zlib.crc32(self.ctx.worker_id.encode())
        if cpu_threads is not None:
            torch.set_num_threads(cpu_threads)

    # --- the loop ---------------------------------------------------------------------------

    def run(self, *, handle_signals: bool = True) -> int:
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.ctx.stop.set())
        idle_since = time.monotonic()
        failures = 0
        self._event("worker_start", device=str(self.ctx.device))
        while not self.ctx.stop.is_set():
            if self.max_trials is not None and self.trials_run >= self.max_trials:
                break
            try:
                ran = self._run_next()
                failures = 0
            except INFRA_ERRORS as exc:
                failures += 1
                delay = min(30.0, 0.5 * 2**failures)
                self._event("database_unavailable", error=str(exc)[:300], retry_in=delay)
                self.ctx.stop.wait(delay)
                continue
            if ran:
                idle_since = time.monotonic()
                continue
            if self.idle_exit is not None and time.monotonic() - idle_since > self.idle_exit:
                break
            self.ctx.stop.wait(self.poll_interval)
        self._event("worker_exit", trials=self.trials_run)
        self.close()
        return self.trials_run

    def close(self) -> None:
        self.storage.remove_session()
        self.engine.dispose()

    def _run_next(self) -> bool:
        candidates = self._candidates()
        # Fair share: the study with the fewest running trials, then the least done.
        candidates.sort(
            key=lambda c: (c.counts.running, c.counts.finished / c.spec.budget.max_trials)
        )
        return any(self._run_one(c) for c in candidates)

    # --- choosing a study -------------------------------------------------------------------

    def _candidates(self) -> list[Candidate]:
        with session_scope(self.sessions) as session:
            query = select(StudyRecord).where(StudyRecord.status == StudyStatus.RUNNING)
            if self.studies:
                query = query.where(StudyRecord.name.in_(self.studies))
            records = list(session.scalars(query.order_by(StudyRecord.id)))
        found = []
        for record in records:
            spec = StudySpec.model_validate(record.spec)
            key = (record.id, record.name)
            if key not in self._studies:
                self._studies[key] = load_study(spec, self.storage, seed_offset=self._seed_offset)
            study = self._studies[key]
            with warnings.catch_warnings():  # experimental in Optuna; we rely on it on purpose
                warnings.simplefilter("ignore", ExperimentalWarning)
                fail_stale_trials(study)  # trials of dead workers free their budget slot
            counts = trial_counts(self.storage, study._study_id)  # noqa: SLF001
            if self._budget_spent(record, spec, study, counts):
                continue
            if counts.finished + counts.running < spec.budget.max_trials:
                found.append(Candidate(record, spec, study, counts))
        return found

    def _budget_spent(
        self, record: StudyRecord, spec: StudySpec, study: optuna.Study, counts: TrialCounts
    ) -> bool:
        budget = spec.budget
        reason = None
        if counts.finished >= budget.max_trials:
            reason = f"max_trials={budget.max_trials} reached"
        elif budget.timeout_s is not None:
            created = record.created_at.replace(tzinfo=record.created_at.tzinfo or dt.UTC)
            if (utcnow() - created).total_seconds() > budget.timeout_s:
                reason = f"timeout_s={budget.timeout_s} reached"
        if reason is None and budget.max_gpu_hours is not None:
            hours = user_attr_sum(self.storage, study._study_id, "device_seconds") / 3600  # noqa: SLF001
            if hours >= budget.max_gpu_hours:
                reason = f"max_gpu_hours={budget.max_gpu_hours} reached ({hours:.3f} used)"
        if reason is None:
            return False
        if counts.running == 0:
            self._set_status(record, StudyStatus.COMPLETED, reason)
        return True

    def _set_status(self, record: StudyRecord, status: StudyStatus, reason: str) -> None:
        with session_scope(self.sessions) as session:
            changed = session.execute(
                update(StudyRecord)
                .where(StudyRecord.id == record.id, StudyRecord.status == StudyStatus.RUNNING)
                .values(status=status, status_reason=reason, updated_at=utcnow())
            ).rowcount
        if changed:
            self._event("study_" + status, study=record.name, reason=reason)

    # --- one trial --------------------------------------------------------------------------

    @contextmanager
    def _budget_gate(self, candidate: Candidate) -> Iterator[None]:
        """Held around a trial's claim: count, then RUNNING, under the study's lock, so the
        count every worker sees includes every claimed trial."""
        with StudyLock(self.engine, candidate.record.id):
            counts = trial_counts(self.storage, candidate.study._study_id)  # noqa: SLF001
            if counts.finished + counts.running >= candidate.spec.budget.max_trials:
                raise BudgetSpent(candidate.spec.name)
            yield

    def _run_one(self, candidate: Candidate) -> bool:
        spec, study = candidate.spec, candidate.study
        claimed: dict[str, Any] = {}
        # Coordination latencies, logged with the trial: claim = stale sweep + ask (cache sync,
        # budget gate, trial row; Optuna samples lazily, inside the objective), tell = from
        # the objective's return until stored.
        marks = {"begin": time.perf_counter()}

        def on_start(trial: optuna.Trial) -> None:
            marks["started"] = time.perf_counter()
            claimed["id"] = trial._trial_id  # noqa: SLF001
            self._event("trial_start", study=spec.name, trial=trial.number)

        objective = self.objective_factory(self.ctx, spec, on_start=on_start)

        def timed(trial: optuna.Trial) -> float:
            try:
                return objective(trial)
            finally:
                marks["returned"] = time.perf_counter()

        try:
            with self.storage.claiming(lambda: self._budget_gate(candidate)):
                study.optimize(timed, n_trials=1, catch=(Exception,))
        except BudgetSpent:
            return False
        except Exception as exc:
            # Optuna's own bookkeeping failed (e.g. `tell` while the database is down).
            # The trial stays RUNNING; its heartbeat stops, so it is failed and retried
            # after the grace period. Back off if the database is the cause.
            if not self._database_reachable():
                raise StorageUnavailable(f"database lost during a trial: {exc}") from exc
            raise
        if "id" not in claimed:
            return False
        self.trials_run += 1
        latency = {"claim_s": marks["started"] - marks["begin"],
                   "tell_s": time.perf_counter() - marks["returned"]}  # fmt: skip
        trial = self.storage.get_trial(claimed["id"])
        self._after_trial(candidate, trial, latency)
        return True

    def _database_reachable(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    def _after_trial(
        self, candidate: Candidate, trial: FrozenTrial, latency: dict[str, float]
    ) -> None:
        spec, study = candidate.spec, candidate.study
        reason = trial.user_attrs.get("fail_reason")
        self._event(
            "trial_end",
            study=spec.name,
            trial=trial.number,
            state=trial.state.name.lower(),
            value=trial.value,
            reason=reason or trial.user_attrs.get("prune_reason"),
            setup_s=trial.user_attrs.get("setup_seconds"),
            train_s=trial.user_attrs.get("train_seconds"),
            **{k: round(v, 4) for k, v in latency.items()},
        )
        if trial.state != TrialState.FAIL:
            return
        if reason == "shutdown":
            study.enqueue_trial(trial.params, user_attrs={RETRIED_FROM_ATTR: trial.number})
        elif reason == "oom":
            self._record_infeasible(spec, study, trial)
        self._check_failure_streak(candidate)

    def _record_infeasible(self, spec: StudySpec, study: optuna.Study, trial: FrozenTrial) -> None:
        """Tell samplers the config does not fit in memory: samplers skip FAILED trials, so
        add a PRUNED copy with a violated constraint (excluded from budget counts)."""
        distributions = optuna_distributions(spec)
        record = create_trial(
            state=TrialState.PRUNED,
            params=trial.params,
            distributions={k: distributions[k] for k in trial.params},
            user_attrs={INFEASIBLE_RECORD_ATTR: trial.number, "fail_reason": "oom"},
        )
        record.set_constraint("oom", 1.0)
        study.add_trial(record)

    def _check_failure_streak(self, candidate: Candidate) -> None:
        limit = candidate.spec.budget.max_failures_in_a_row
        trials = [
            t
            for t in candidate.study.get_trials(deepcopy=False)
            if not is_record(t)
            and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        ]
        recent = trials[-limit:]
        errors = {t.user_attrs.get("error") for t in recent}
        if (
            len(recent) == limit
            and all(t.state == TrialState.FAIL for t in recent)
            and all(t.user_attrs.get("fail_reason") == "error" for t in recent)
            and len(errors) == 1
        ):
            error = errors.pop()
            self._set_status(
                candidate.record, StudyStatus.FAILED, f"{limit} trials in a row failed: {error}"
            )

    def _event(self, event: str, **fields: Any) -> None:
        line = {"event": event, "worker": self.ctx.worker_id, **fields}
        log.info(json.dumps(line, default=str))
