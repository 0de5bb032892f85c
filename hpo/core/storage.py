"""Optuna's RDB storage on the same database as the service's tables."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from optuna import Study
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.samplers import RandomSampler
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Executable, event, exists, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from hpo.core import optuna_tables, records
from hpo.core.db import sqlite_pragmas
from hpo.core.optuna_tables import trial_heartbeats, trials
from hpo.core.settings import Settings

STALE_REASON = "stale: no heartbeat within the grace period (worker died or lost the database)"
# Held around a claim of the queued trial with this id (None: a new trial); yields user
# attributes the claimed trial gets before the gate closes.
ClaimGate = Callable[[int | None], AbstractContextManager[dict[str, Any]]]


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's bounded retry of a dead worker's trial, plus a ``retried_from`` user attr."""

    def __call__(self, study: Study, trial: FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.user_attrs = records.retry_attrs(trial.number, trial.user_attrs)
        super().__call__(study, trial)


class HeartbeatStorage(RDBStorage):
    """RDB storage whose trials can never be RUNNING without a heartbeat.

    Optuna starts a trial's heartbeat thread only after ``ask`` has created the trial, and its
    stale-trial sweep skips RUNNING trials that have no heartbeat at all: a worker killed in
    between would leave its trial RUNNING forever, holding a budget slot. Here the first
    heartbeat is written as soon as a trial is RUNNING, and a sweep gives RUNNING trials that
    still have none (the process died between those two writes) a heartbeat on the database's
    clock, so Optuna's own check fails them one grace period later. Stale trials are failed
    with ``fail_reason`` set.
    What remains of ``ask`` after the first beat is ``get_trial`` and the sampler's
    ``before_trial``; relative sampling (a GP fit) runs lazily at the first ``suggest``,
    under Optuna's heartbeat, so a slow sampler does not get its trial failed as stale.

    ``claiming(gate)`` makes this process's trial claims happen inside ``gate(trial_id)``: a
    new RUNNING trial (``None``) or a WAITING one popped (its id). A worker holds its study's
    budget lock only around the claim itself, not around Optuna's cache sync or the sampler.
    The user attributes the gate yields are set on the claimed trial before the gate closes,
    so the next claimant already sees them. ``swept``: the caller swept the study's stale
    trials just before (the workers' scan), so Optuna's own sweep before each trial is
    skipped. Optuna's ask reads a new trial back right after creating it: in a claim, the
    trial as created is that read's answer, not six more statements.
    A heartbeat is one upsert (PostgreSQL, SQLite), where Optuna reads the row, then writes.
    """

    _gate: ClaimGate | None = None
    _swept = False
    _created: FrozenTrial | None = None  # the trial a claim just created (its thread only)

    @contextmanager
    def claiming(self, gate: ClaimGate, *, swept: bool = False) -> Iterator[None]:
        self._gate, self._swept = gate, swept
        try:
            yield
        finally:
            self._gate, self._swept = None, False

    @contextmanager
    def _claim(self, trial_id: int | None) -> Iterator[dict[str, Any]]:
        if self._gate is None:
            yield {}
            return
        # Optuna claims in this thread's scoped session: give it its connection before the
        # gate, so that no claim waits under the study's lock for a connection to open.
        session = self.scoped_session()
        session.connection()
        try:
            with self._gate(trial_id) as attrs:
                yield attrs
        finally:
            session.close()  # hands the connection back if the gate refused the claim

    def _create_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None = None
    ) -> FrozenTrial:
        # The private half is what Optuna's cache layer calls; the public one delegates to it.
        if template_trial is not None and template_trial.state != TrialState.RUNNING:
            return super()._create_new_trial(study_id, template_trial)
        with self._claim(None) as attrs:
            trial = super()._create_new_trial(study_id, template_trial)
            for key, value in attrs.items():
                self.set_trial_user_attr(optuna_tables.trial_id(trial), key, value)
                trial.user_attrs[key] = value
        self.record_heartbeat(optuna_tables.trial_id(trial))
        if self._gate is not None:  # a worker's claim: Optuna's ask reads the trial next
            self._created = copy.deepcopy(trial)
        return trial

    def get_trial(self, trial_id: int) -> FrozenTrial:
        created, self._created = self._created, None
        if created is not None and optuna_tables.trial_id(created) == trial_id:
            return created
        return super().get_trial(trial_id)

    def record_heartbeat(self, trial_id: int) -> None:
        beat = _beat(self.engine.dialect.name, trial_id)
        if beat is None:
            super().record_heartbeat(trial_id)
            return
        with self.engine.begin() as conn:
            conn.execute(beat)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        if state != TrialState.RUNNING:
            return super().set_trial_state_values(trial_id, state, values)
        with self._claim(trial_id) as attrs:  # an enqueued or retried trial is being claimed
            changed = super().set_trial_state_values(trial_id, state, values)
            for key, value in attrs.items() if changed else ():
                self.set_trial_user_attr(trial_id, key, value)
        if changed:
            self.record_heartbeat(trial_id)
        return changed

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if self._swept:
            return []
        self._adopt_orphans(study_id)
        stale = super()._get_stale_trial_ids(study_id)
        for trial_id in stale:
            # Set while the trial is still RUNNING: Optuna refuses attrs on finished trials.
            with contextlib.suppress(UpdateFinishedTrialError):
                records.record_failure(records.StoredTrial(self, trial_id), reason=STALE_REASON)
        return stale

    def retry(self, study: Study, trial: FrozenTrial) -> None:
        """Queue a copy of a failed ``trial`` as a dead worker's trials are, under the same
        ``max_retries`` limit (its ``retry_history`` counts both)."""
        callback = self.get_heartbeat_stale_trial_callback()
        assert callback is not None, "make_storage sets the retry callback"
        callback(study, trial)

    def fail_killed(self, trial_id: int, *, reason: str, error: str) -> bool:
        """Fail the RUNNING trial of a process that was just killed (no progress, or no exit
        after a SIGTERM) and retry it; False when it had ended already (a stale sweep)."""
        try:
            records.record_failure(records.StoredTrial(self, trial_id), reason=reason, error=error)
            if not self.set_trial_state_values(trial_id, TrialState.FAIL):
                return False
        except UpdateFinishedTrialError:
            return False
        with self.engine.connect() as conn:
            owner = conn.execute(
                select(trials.c.study_id).where(trials.c.trial_id == trial_id)
            ).scalar_one()
        name = self.get_study_name_from_id(owner)
        self.retry(Study(name, self, sampler=RandomSampler()), self.get_trial(trial_id))
        return True

    def _adopt_orphans(self, study_id: int) -> None:
        """Give RUNNING trials without a heartbeat one stamped with the database's clock.

        Their worker died between the claim and its first beat; from now on Optuna's own stale
        check fails them after the grace period. Nothing here reads a worker's clock, so nodes
        with skewed clocks or other time zones cannot fail live trials or keep dead ones.
        """
        orphans = select(trials.c.trial_id, func.current_timestamp()).where(
            trials.c.study_id == study_id,
            trials.c.state == TrialState.RUNNING.name,
            ~exists().where(trial_heartbeats.c.trial_id == trials.c.trial_id),
        )
        adopt = insert(trial_heartbeats).from_select(["trial_id", "heartbeat"], orphans)
        # A worker beating for the first time at this instant wins the race; that is fine.
        with contextlib.suppress(IntegrityError), self.engine.begin() as conn:
            conn.execute(adopt)


def _beat(dialect: str, trial_id: int) -> Executable | None:
    """A heartbeat as one statement: insert the row, or move its time (None: a dialect
    without ``ON CONFLICT``)."""
    now = func.current_timestamp()
    values = {"trial_id": trial_id, "heartbeat": now}
    if dialect == "postgresql":
        pg = postgresql.insert(trial_heartbeats).values(values)
        return pg.on_conflict_do_update(index_elements=["trial_id"], set_={"heartbeat": now})
    if dialect == "sqlite":
        lite = sqlite.insert(trial_heartbeats).values(values)
        return lite.on_conflict_do_update(index_elements=["trial_id"], set_={"heartbeat": now})
    return None


def make_storage(
    settings: Settings, *, pool_size: int = 5, max_overflow: int = 10
) -> HeartbeatStorage:
    """Optuna storage with heartbeats and bounded retries of trials whose worker died.

    Heartbeats only run inside ``Study.optimize``; a trial silent for ``grace_period``
    seconds is failed and a copy of it is queued again, at most ``max_retries`` times.
    The pool keeps ``pool_size`` connections open and opens ``max_overflow`` more at busy
    moments.
    """
    engine_kwargs: dict[str, object] = {
        "pool_pre_ping": True,
        "pool_size": pool_size,
        "max_overflow": max_overflow,
    }
    if settings.database_url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 30}
    else:
        engine_kwargs["connect_args"] = {"connect_timeout": 5}
    with warnings.catch_warnings():
        # Heartbeats and the retry callback are marked experimental; we rely on them on purpose.
        warnings.simplefilter("ignore", ExperimentalWarning)
        storage = HeartbeatStorage(
            settings.database_url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
            heartbeat_stale_trial_callback=RetryStaleTrial(max_retry=settings.max_retries),
        )
    if settings.database_url.startswith("sqlite"):
        # Optuna opens its engine itself: the pragmas apply from its next connection on.
        event.listen(storage.engine, "connect", sqlite_pragmas)
        storage.engine.dispose()
    return storage
