"""Create, read, change and delete studies: our row and Optuna's study kept in step."""

from __future__ import annotations

import contextlib
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hpo.db import StudyRecord, StudyStatus
from hpo.errors import StudyConflict, StudyNotFound
from hpo.factory import build_pruner, build_sampler
from hpo.paths import check_spec_paths
from hpo.settings import Settings
from hpo.spec import StudySpec

# Which status a transition may start from.
TRANSITIONS: dict[str, tuple[StudyStatus, ...]] = {
    StudyStatus.PAUSED: (StudyStatus.RUNNING,),
    StudyStatus.RUNNING: (StudyStatus.PAUSED,),
    StudyStatus.STOPPED: (StudyStatus.RUNNING, StudyStatus.PAUSED),
}


def create_study(
    session: Session, storage: BaseStorage, *, spec: StudySpec, owner: str, settings: Settings
) -> StudyRecord:
    """Register ``spec`` and create its Optuna study, both or neither.

    Raises:
        SpecError: The spec points outside the allowed data or model roots.
        StudyConflict: The name is taken (by any owner: Optuna study names are global).
    """
    check_spec_paths(spec, settings)
    build_sampler(spec.sampler, spec)
    build_pruner(spec.pruner)
    if session.scalar(select(StudyRecord.id).where(StudyRecord.name == spec.name)) is not None:
        raise StudyConflict(f"a study named {spec.name!r} already exists")
    # Optuna's study first: SQLite allows one writer, so our row cannot stay flushed
    # while Optuna writes through its own connection. Undo Optuna's half if ours fails.
    direction = StudyDirection[spec.objective.direction.upper()]
    try:
        study_id = storage.create_new_study([direction], spec.name)
    except DuplicatedStudyError as exc:
        raise StudyConflict(f"an Optuna study named {spec.name!r} already exists") from exc
    record = StudyRecord(
        name=spec.name, owner=owner, spec=spec.model_dump(mode="json"), status=StudyStatus.RUNNING
    )
    try:
        storage.set_study_user_attr(study_id, "owner", owner)
        storage.set_study_user_attr(study_id, "objective", spec.objective.metric)
        storage.set_study_user_attr(study_id, "fidelity", "step = training examples seen")
        session.add(record)
        session.commit()
    except IntegrityError as exc:
        storage.delete_study(study_id)
        raise StudyConflict(f"a study named {spec.name!r} already exists") from exc
    except BaseException:
        storage.delete_study(study_id)
        raise
    return record


def get_study(session: Session, *, name: str, owner: str | None) -> StudyRecord:
    """The study ``name``; ``owner=None`` skips the ownership check (workers).

    Raises:
        StudyNotFound: No such study, or it belongs to someone else.
    """
    query = select(StudyRecord).where(StudyRecord.name == name)
    if owner is not None:
        query = query.where(StudyRecord.owner == owner)
    record = session.scalar(query)
    if record is None:
        raise StudyNotFound(f"study {name!r} not found")
    return record


def list_studies(
    session: Session, *, owner: str, offset: int, limit: int
) -> tuple[list[StudyRecord], int]:
    where = StudyRecord.owner == owner
    count = session.scalar(select(func.count()).select_from(StudyRecord).where(where)) or 0
    rows = session.scalars(
        select(StudyRecord).where(where).order_by(StudyRecord.id).offset(offset).limit(limit)
    )
    return list(rows), count


def set_status(
    session: Session, *, record: StudyRecord, status: StudyStatus, reason: str | None = None
) -> StudyRecord:
    """Move a study to ``status`` if its current status allows it.

    Raises:
        StudyConflict: The transition is not allowed from the current status.
    """
    allowed = TRANSITIONS.get(status, ())
    if record.status not in allowed:
        raise StudyConflict(
            f"cannot move study {record.name!r} from {record.status} to {status}; "
            f"allowed from {[str(s) for s in allowed]}"
        )
    record.status = status
    record.status_reason = reason
    session.flush()
    return record


def delete_study(session: Session, storage: BaseStorage, *, record: StudyRecord) -> None:
    """Remove the Optuna study with its trials, then our row.

    In this order a failure leaves our row, so the DELETE can be repeated.
    """
    with contextlib.suppress(KeyError):  # Optuna's half may already be gone
        storage.delete_study(storage.get_study_id_from_name(record.name))
    session.delete(record)
    session.flush()


def enqueue_trial(
    storage: BaseStorage,
    *,
    record: StudyRecord,
    params: dict[str, Any],
    user_attrs: dict[str, Any],
) -> None:
    """Queue a configuration to be tried before the sampler proposes new ones."""
    study = optuna.load_study(study_name=record.name, storage=storage)
    study.enqueue_trial(params, user_attrs=user_attrs)
