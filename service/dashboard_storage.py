"""Optuna storage as one owner sees it through optuna-dashboard: their studies, read-only.

optuna-dashboard reads and writes through whatever ``BaseStorage`` it is given and knows no
owners. This proxy shows it only the studies that ``hpo_studies`` gives to the request's owner
and refuses every write. Optuna signals a missing record with ``KeyError`` and the dashboard
answers those with 404, so another owner's study or trial looks like none at all.

The visible study ids are fixed per request by ``scoped``, in a context variable set in the
thread that runs the dashboard; outside a scope nothing is visible (fail closed).
"""

from __future__ import annotations

import copy
from collections.abc import Container, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NoReturn

from optuna.storages import BaseStorage, RDBStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import select

from hpo.core import optuna_tables, records
from hpo.core.db import StudyRecord
from hpo.core.optuna_tables import studies, trials

_visible: ContextVar[frozenset[int]] = ContextVar("dashboard_studies", default=frozenset())


class OwnerScopedStorage(BaseStorage):
    """A read-only view of ``storage`` limited to the study ids of the current ``scoped``.

    Methods that ``BaseStorage`` implements on top of these (``get_trial_params``,
    ``get_n_trials``, ``get_best_trial``, ...) inherit the checks.
    """

    def __init__(self, storage: RDBStorage) -> None:
        self._storage = storage

    def study_ids_of(self, owner: str) -> frozenset[int]:
        """Optuna's ids of the studies ``owner`` registered: one query over both tables."""
        query = (
            select(studies.c.study_id)
            .join_from(studies, StudyRecord, StudyRecord.name == studies.c.study_name)
            .where(StudyRecord.owner == owner)
        )
        with self._storage.engine.connect() as conn:
            return frozenset(conn.scalars(query))

    def study_of_trial(self, trial_id: int) -> int | None:
        """Optuna's id of the study ``trial_id`` belongs to, whoever owns it."""
        with self._storage.engine.connect() as conn:
            return conn.scalar(select(trials.c.study_id).where(trials.c.trial_id == trial_id))

    @contextmanager
    def scoped(self, study_ids: frozenset[int]) -> Iterator[None]:
        """Show only ``study_ids`` (and their trials) to calls made inside the block."""
        token = _visible.set(study_ids)
        try:
            yield
        finally:
            _visible.reset(token)

    def _study(self, study_id: int) -> int:
        if study_id not in _visible.get():
            raise KeyError(f"No study with study_id {study_id} exists.")
        return study_id

    def _trial(self, trial_id: int) -> int:
        if self.study_of_trial(trial_id) not in _visible.get():
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        return trial_id

    # Reads: the record must lie in a visible study.

    def get_all_studies(self) -> list[FrozenStudy]:
        visible = _visible.get()
        studies = self._storage.get_all_studies()
        return [s for s in studies if optuna_tables.study_id(s) in visible]

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._study(self._storage.get_study_id_from_name(study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._storage.get_study_name_from_id(self._study(study_id))

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._storage.get_study_directions(self._study(study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._storage.get_study_user_attrs(self._study(study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._storage.get_study_system_attrs(self._study(study_id))

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._storage.get_trial(self._trial(trial_id))

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        # RDBStorage reads the attrs alone; the inherited version would load the whole trial.
        return self._storage.get_trial_system_attrs(self._trial(trial_id))

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        found = self._storage.get_all_trials(self._study(study_id), deepcopy, states)
        return labelled(found)

    # Writes: none, whoever asks. Changes go through the REST API, which checks them.

    def _refuse(self, *_: Any, **__: Any) -> NoReturn:
        raise PermissionError("the dashboard is read-only; use the REST API")

    create_new_study = delete_study = set_study_user_attr = set_study_system_attr = _refuse
    create_new_trial = set_trial_param = set_trial_state_values = _refuse
    set_trial_intermediate_value = set_trial_user_attr = set_trial_system_attr = _refuse


SEGMENT_LABEL = "segment"


def labelled(found: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials, with ``segment`` (a user attribute: the dashboard shows it as a column) on
    those Optuna's state misnames: a paused segment, or one that gave its worker up, is PRUNED
    to Optuna and a trial whose worker was lost is FAIL, though their configuration goes on in
    a later trial.

    Copies: what the storage returned is left as it was. The list keeps every trial in its
    place (optuna-dashboard fetches a study's trials by position, ``after=N``).
    """
    continued = {records.continues(t): t.number for t in found}
    retried = {records.retried_from(t): t.number for t in found}
    labels: dict[int, str] = {}
    for trial in found:
        paused = records.paused_at(trial)
        gave_up = records.yielded(trial)
        if gave_up is not None and trial.state == TrialState.PRUNED:
            after = continued.get(trial.number)
            labels[trial.number] = f"{gave_up}; " + (
                "continues later" if after is None else f"continued as trial {after}"
            )
        elif paused is not None and trial.state == TrialState.PRUNED:
            after = continued.get(trial.number)
            labels[trial.number] = f"paused at {paused} examples; " + (
                "continues later" if after is None else f"continued as trial {after}"
            )
        elif trial.state == TrialState.FAIL and trial.number in retried:
            labels[trial.number] = f"interrupted; queued again as trial {retried[trial.number]}"
    return [_with_label(t, labels[t.number]) if t.number in labels else t for t in found]


def _with_label(trial: FrozenTrial, label: str) -> FrozenTrial:
    shown = copy.copy(trial)
    shown.user_attrs = {**trial.user_attrs, SEGMENT_LABEL: label}
    return shown
