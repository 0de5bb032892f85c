"""Studies: register, read, page through trials, warm-start, pause/resume/stop, delete."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Row
from sqlalchemy.orm import Session

from hpo.core import artifacts, owners, records, studies
from hpo.core.db import StudyRecord, StudyStatus
from hpo.core.errors import StudyConflict, StudyNotFound
from hpo.core.export import best_configuration
from hpo.core.factory import check_params
from hpo.core.optuna_tables import trial_id
from hpo.core.progress import best_trial, trial_page
from hpo.core.schedulers import build_scheduler
from hpo.core.schemas import (
    BestConfigPublic,
    EnqueuePublic,
    EnqueueRequest,
    ErrorPublic,
    Page,
    StudyPublic,
    StudySummary,
    TrialCountsPublic,
    TrialPublic,
    ValidationErrorPublic,
)
from hpo.core.settings import Settings
from hpo.core.spec import NAME_PATTERN, StudySpec
from hpo.core.summary import Summary, stored_spec, study_summary
from service.deps import (
    Credentials,
    CurrentOwner,
    FileChecksDep,
    SessionDep,
    SettingsDep,
    StorageDep,
    read_as_owner,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "Missing, invalid, revoked or expired token."},
    404: {"model": ErrorPublic, "description": "No such study for this token's owner."},
    409: {
        "model": ErrorPublic,
        "description": "The study's state forbids this (taken name, bad transition, or its "
        "Optuna study was removed outside the service).",
    },
    422: {"model": ValidationErrorPublic, "description": "Invalid input; `loc` says where."},
    429: {
        "model": ErrorPublic,
        "description": "Too many failed token checks from this client, or the owner is at a "
        "quota (the body's `quota` names the setting, `limit` its value).",
    },
    503: {
        "model": ErrorPublic,
        "description": "Busy or the database is unavailable; retry after `Retry-After` seconds.",
    },
}
router = APIRouter(prefix="/studies", tags=["studies"], responses=ERRORS)
Name = Annotated[str, Path(pattern=NAME_PATTERN, description="The study's name.")]
Offset = Annotated[int, Query(ge=0, le=10**7)]
Limit = Annotated[int, Query(ge=1, le=500)]


def _public(record: Row[Any] | StudyRecord, summary: Summary) -> StudyPublic:
    counts, best = summary.counts, summary.best
    return StudyPublic(
        **{field: getattr(record, field) for field in StudySummary.model_fields},
        spec=stored_spec(record),  # validated once per process: not again in the answer
        trials=TrialCountsPublic(**counts.__dict__, finished=counts.finished),
        best_value=best.value if best else None,
        best_params=best.params if best else None,
        best_trial=best.number if best else None,
        best_ties=best.ties if best else 0,
        baseline=summary.baseline,
        warm_start_from=summary.warm_start_from,
    )


def _chunks(reader: BinaryIO, size: int = 2**20) -> Iterator[bytes]:
    with reader:
        while chunk := reader.read(size):
            yield chunk


def _best(record: StudyRecord, storage: RDBStorage) -> FrozenTrial:
    best = best_trial(storage, studies.optuna_study_id(storage, record))
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
    file_checks: FileChecksDep,
) -> StudyPublic:
    # The token check's connection goes back to the pool before the file checks, which are
    # bounded but may block on a tenant's file: they must hold nothing shared.
    session.commit()
    file_checks.run(owner, lambda: studies.check_spec(spec, settings))
    record = studies.register_study(session, storage, spec=spec, owner=owner, settings=settings)
    return _public(record, study_summary(session.connection(), name=record.name, owner=owner)[1])


# The reads below are async with async dependencies, and do their work in one threadpool hop
# (``read_as_owner``): the token check and the route's queries on one session.


@router.get("", response_model=Page[StudySummary])
async def list_studies(
    request: Request, credentials: Credentials, offset: Offset = 0, limit: Limit = 50
) -> Page[StudySummary]:
    def read(session: Session, owner: str) -> Page[StudySummary]:
        rows, count = studies.list_studies(session, owner=owner, offset=offset, limit=limit)
        return Page[StudySummary](
            data=[StudySummary.model_validate(r, from_attributes=True) for r in rows],
            count=count,
        )

    return await read_as_owner(request, credentials, read)


@router.get("/{name}", response_model=StudyPublic)
async def get_study(name: Name, request: Request, credentials: Credentials) -> StudyPublic:
    def read(session: Session, owner: str) -> StudyPublic:
        return _public(*study_summary(session.connection(), name=name, owner=owner))

    return await read_as_owner(request, credentials, read)


@router.get("/{name}/trials", response_model=Page[TrialPublic])
async def list_trials(
    name: Name,
    request: Request,
    credentials: Credentials,
    storage: StorageDep,
    offset: Offset = 0,
    limit: Limit = 50,
    state: Annotated[
        str | None, Query(pattern="^(complete|pruned|paused|fail|running|waiting)$")
    ] = None,
) -> Page[TrialPublic]:
    def read(session: Session, owner: str) -> Page[TrialPublic]:
        record = studies.get_study(session, name=name, owner=owner)
        page, count = trial_page(
            storage,
            studies.optuna_study_id(storage, record),
            offset=offset,
            limit=limit,
            state="paused" if state == "paused" else TrialState[state.upper()] if state else None,
        )
        return Page[TrialPublic](data=[TrialPublic.of(t) for t in page], count=count)

    return await read_as_owner(request, credentials, read)


@router.get("/{name}/best", response_model=TrialPublic)
async def get_best(
    name: Name, request: Request, credentials: Credentials, storage: StorageDep
) -> TrialPublic:
    def read(session: Session, owner: str) -> TrialPublic:
        return TrialPublic.of(_best(studies.get_study(session, name=name, owner=owner), storage))

    return await read_as_owner(request, credentials, read)


def _zip(
    session: Session,
    settings: Settings,
    record: StudyRecord,
    trial: FrozenTrial,
    kind: str,
) -> StreamingResponse:
    """A recorded artifact of ``trial`` as a zip download; 404 saying why when there is none."""
    stored = artifacts.recorded(session, study_id=record.id, trial_id=trial_id(trial), kind=kind)
    missing = f"trial {trial.number} of {record.name!r} has no saved {kind}"
    if stored is None:
        why = records.artifact_error(trial, kind)
        raise StudyNotFound(f"{missing}: {why}" if why else missing)
    try:
        reader = artifacts.open_artifact(settings, stored.artifact_id)
    except ArtifactNotFound:
        raise StudyNotFound(f"{missing}: its file is gone from the artifact store") from None
    filename = f"{record.name}-trial{trial.number}-{kind}.zip"
    return StreamingResponse(
        _chunks(reader),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


ZIP: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/zip": {}}, "description": "A zip archive."}
}


@router.get("/{name}/best/adapter", response_class=StreamingResponse, responses=ZIP)
async def get_best_adapter(
    name: Name,
    request: Request,
    credentials: Credentials,
    storage: StorageDep,
    settings: SettingsDep,
) -> StreamingResponse:
    """The best trial's LoRA adapter, for ``PeftModel.from_pretrained``."""

    def read(session: Session, owner: str) -> StreamingResponse:
        record = studies.get_study(session, name=name, owner=owner)
        return _zip(session, settings, record, _best(record, storage), artifacts.ADAPTER)

    return await read_as_owner(request, credentials, read)


@router.get("/{name}/best/config", response_model=BestConfigPublic)
async def get_best_config(
    name: Name, request: Request, credentials: Credentials, storage: StorageDep
) -> BestConfigPublic:
    """The best configuration as plain transformers / PEFT / TRL arguments."""

    def read(session: Session, owner: str) -> BestConfigPublic:
        record = studies.get_study(session, name=name, owner=owner)
        config = best_configuration(stored_spec(record), _best(record, storage))
        return BestConfigPublic.model_validate(config)

    return await read_as_owner(request, credentials, read)


@router.get("/{name}/trials/{number}/tensorboard", response_class=StreamingResponse, responses=ZIP)
async def get_trial_logs(
    name: Name,
    number: Annotated[int, Path(ge=0, le=10**9)],
    request: Request,
    credentials: Credentials,
    storage: StorageDep,
    settings: SettingsDep,
) -> StreamingResponse:
    """A trial's training curves (train loss, learning rate, grad norm) as TensorBoard logs."""

    def read(session: Session, owner: str) -> StreamingResponse:
        record = studies.get_study(session, name=name, owner=owner)
        study_id = studies.optuna_study_id(storage, record)
        page, _ = trial_page(storage, study_id, offset=number, limit=1)
        if not page or page[0].number != number:
            raise StudyNotFound(f"study {name!r} has no trial {number}")
        return _zip(session, settings, record, page[0], artifacts.TENSORBOARD)

    return await read_as_owner(request, credentials, read)


@router.post("/{name}/trials", status_code=201, response_model=EnqueuePublic)
def enqueue_trial(
    name: Name,
    body: EnqueueRequest,
    owner: CurrentOwner,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> EnqueuePublic:
    record = studies.get_study(session, name=name, owner=owner)
    if record.status not in (StudyStatus.RUNNING, StudyStatus.PAUSED):
        raise StudyConflict(f"study {name!r} is {record.status}; it takes no new trials")
    spec = stored_spec(record)
    refusal = build_scheduler(spec.search).enqueue_refusal
    if refusal is not None:
        raise StudyConflict(f"study {name!r} {refusal}; it takes no enqueued trials")
    params = check_params(spec.search, body.params)
    # Under the owner's lock until the route returns and its session commits, after Optuna
    # has committed the trial: the next enqueue of this owner counts it.
    owners.check_queue_quota(session, owner=owner, study=name, settings=settings)
    studies.enqueue_trial(
        storage, record=record, params=params, user_attrs=records.enqueued_attrs(owner)
    )
    return EnqueuePublic(params=params)


def _transition(
    name: str, owner: str, session: SessionDep, storage: StorageDep, status: StudyStatus
) -> StudySummary:
    record = studies.get_study(session, name=name, owner=owner)
    studies.set_status(session, record=record, status=status)
    # A study resumed with its budget spent (say its timeout passed while paused) completes
    # here: reads never write, so the status follows the budget where the budget is looked at.
    studies.finish_if_spent(
        session, storage, record=record, study_id=studies.optuna_study_id(storage, record)
    )
    return StudySummary.model_validate(record, from_attributes=True)


@router.post("/{name}/pause", response_model=StudySummary)
def pause(
    name: Name, owner: CurrentOwner, session: SessionDep, storage: StorageDep
) -> StudySummary:
    return _transition(name, owner, session, storage, StudyStatus.PAUSED)


@router.post("/{name}/resume", response_model=StudySummary)
def resume(
    name: Name, owner: CurrentOwner, session: SessionDep, storage: StorageDep
) -> StudySummary:
    return _transition(name, owner, session, storage, StudyStatus.RUNNING)


@router.post("/{name}/stop", response_model=StudySummary)
def stop(
    name: Name, owner: CurrentOwner, session: SessionDep, storage: StorageDep
) -> StudySummary:
    return _transition(name, owner, session, storage, StudyStatus.STOPPED)


@router.delete("/{name}", status_code=204)
def delete(
    name: Name,
    owner: CurrentOwner,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> Response:
    record = studies.get_study(session, name=name, owner=owner)
    studies.delete_study(session, storage, record=record, settings=settings)
    return Response(status_code=204)
