"""Studies: register, read, page through trials, warm-start, pause/resume/stop, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from hpo import artifacts
from hpo.db import StudyRecord, StudyStatus
from hpo.errors import StudyConflict, StudyNotFound
from hpo.factory import check_params
from hpo.progress import best_trial, trial_counts, trial_page
from hpo.spec import StudySpec
from service import crud
from service.deps import CurrentOwner, SessionDep, SettingsDep, StorageDep
from service.schemas import (
    EnqueuePublic,
    EnqueueRequest,
    Page,
    StudyPublic,
    StudySummary,
    TrialCountsPublic,
    TrialPublic,
)

router = APIRouter(prefix="/studies", tags=["studies"])
Offset = Annotated[int, Query(ge=0, le=10**7)]
Limit = Annotated[int, Query(ge=1, le=500)]


def _optuna_id(storage: RDBStorage, name: str) -> int | None:
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def _public(record: StudyRecord, storage: RDBStorage) -> StudyPublic:
    study_id = _optuna_id(storage, record.name)
    counts = trial_counts(storage, study_id) if study_id is not None else None
    best = best_trial(storage, study_id) if study_id is not None else None
    return StudyPublic(
        **StudySummary.model_validate(record, from_attributes=True).model_dump(),
        spec=StudySpec.model_validate(record.spec),
        trials=TrialCountsPublic(
            **(counts.__dict__ if counts else dict.fromkeys(TrialCountsPublic.model_fields, 0)),
            finished=counts.finished if counts else 0,
        ),
        best_value=best.value if best else None,
        best_params=best.params if best else None,
        best_trial=best.number if best else None,
    )


def _trial_public(trial: FrozenTrial) -> TrialPublic:
    duration = trial.duration.total_seconds() if trial.duration else None
    return TrialPublic(
        number=trial.number,
        state=trial.state.name.lower(),
        params=trial.params,
        value=trial.value,
        intermediate_values=trial.intermediate_values,
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        duration_s=duration,
        user_attrs=trial.user_attrs,
    )


def _best(record: StudyRecord, storage: RDBStorage) -> FrozenTrial:
    study_id = _optuna_id(storage, record.name)
    best = best_trial(storage, study_id) if study_id is not None else None
    if best is None:
        raise StudyNotFound(f"study {record.name!r} has no completed trial yet")
    return best


@router.post("", status_code=201, response_model=StudyPublic)
def create_study(
    spec: StudySpec,
    owner: CurrentOwner,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> StudyPublic:
    record = crud.create_study(session, storage, spec=spec, owner=owner, settings=settings)
    return _public(record, storage)


@router.get("", response_model=Page[StudySummary])
def list_studies(
    owner: CurrentOwner, session: SessionDep, offset: Offset = 0, limit: Limit = 50
) -> Page[StudySummary]:
    rows, count = crud.list_studies(session, owner=owner, offset=offset, limit=limit)
    return Page[StudySummary](
        data=[StudySummary.model_validate(r, from_attributes=True) for r in rows], count=count
    )


@router.get("/{name}", response_model=StudyPublic)
def get_study(
    name: str, owner: CurrentOwner, session: SessionDep, storage: StorageDep
) -> StudyPublic:
    return _public(crud.get_study(session, name=name, owner=owner), storage)


@router.get("/{name}/trials", response_model=Page[TrialPublic])
def list_trials(
    name: str,
    owner: CurrentOwner,
    session: SessionDep,
    storage: StorageDep,
    offset: Offset = 0,
    limit: Limit = 50,
    state: Annotated[str | None, Query(pattern="^(complete|pruned|fail|running|waiting)$")] = None,
) -> Page[TrialPublic]:
    record = crud.get_study(session, name=name, owner=owner)
    study_id = _optuna_id(storage, record.name)
    if study_id is None:
        return Page[TrialPublic](data=[], count=0)
    page, count = trial_page(storage, study_id, offset=offset, limit=limit,
                             state=TrialState[state.upper()] if state else None)  # fmt: skip
    return Page[TrialPublic](data=[_trial_public(t) for t in page], count=count)


@router.get("/{name}/best", response_model=TrialPublic)
def get_best(
    name: str, owner: CurrentOwner, session: SessionDep, storage: StorageDep
) -> TrialPublic:
    return _trial_public(_best(crud.get_study(session, name=name, owner=owner), storage))


@router.get("/{name}/best/adapter", response_class=FileResponse)
def get_best_adapter(
    name: str,
    owner: CurrentOwner,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> FileResponse:
    best = _best(crud.get_study(session, name=name, owner=owner), storage)
    path = artifacts.adapter_path(settings, best)
    if path is None:
        raise StudyNotFound(f"the best trial ({best.number}) of {name!r} has no saved adapter")
    return FileResponse(path, filename=f"{name}-trial{best.number}-adapter.zip")


@router.post("/{name}/trials", status_code=201, response_model=EnqueuePublic)
def enqueue_trial(
    name: str,
    body: EnqueueRequest,
    owner: CurrentOwner,
    session: SessionDep,
    storage: StorageDep,
) -> EnqueuePublic:
    record = crud.get_study(session, name=name, owner=owner)
    if record.status not in (StudyStatus.RUNNING, StudyStatus.PAUSED):
        raise StudyConflict(f"study {name!r} is {record.status}; it takes no new trials")
    spec = StudySpec.model_validate(record.spec)
    params = check_params(spec, body.params)
    crud.enqueue_trial(storage, record=record, params=params, user_attrs={"enqueued_by": owner})
    return EnqueuePublic(params=params)


def _transition(name: str, owner: str, session: SessionDep, status: StudyStatus) -> StudySummary:
    record = crud.get_study(session, name=name, owner=owner)
    crud.set_status(session, record=record, status=status)
    return StudySummary.model_validate(record, from_attributes=True)


@router.post("/{name}/pause", response_model=StudySummary)
def pause(name: str, owner: CurrentOwner, session: SessionDep) -> StudySummary:
    return _transition(name, owner, session, StudyStatus.PAUSED)


@router.post("/{name}/resume", response_model=StudySummary)
def resume(name: str, owner: CurrentOwner, session: SessionDep) -> StudySummary:
    return _transition(name, owner, session, StudyStatus.RUNNING)


@router.post("/{name}/stop", response_model=StudySummary)
def stop(name: str, owner: CurrentOwner, session: SessionDep) -> StudySummary:
    return _transition(name, owner, session, StudyStatus.STOPPED)


@router.delete("/{name}", status_code=204)
def delete(name: str, owner: CurrentOwner, session: SessionDep, storage: StorageDep) -> Response:
    crud.delete_study(session, storage, record=crud.get_study(session, name=name, owner=owner))
    return Response(status_code=204)
