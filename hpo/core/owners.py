"""Per-owner policy: the weight of an owner's fair share, and the owner's quotas.

Workers order owners by running trials per unit of weight (``hpo.core.fairshare``); an
operator sets weights with ``hpo owner weight``. Quotas are settings: registration counts
active studies here, and a worker counts running trials here under the owner's lock.
"""

from __future__ import annotations

import zlib

from sqlalchemy import Connection, ScalarSelect, func, select
from sqlalchemy.orm import Session

from hpo.core.db import OwnerRecord, StudyRecord, StudyStatus
from hpo.core.errors import QuotaExceeded
from hpo.core.optuna_tables import studies as optuna_studies
from hpo.core.optuna_tables import trial_user_attributes, trials
from hpo.core.records import ENQUEUED_BY_ATTR
from hpo.core.settings import Settings

DEFAULT_WEIGHT = 1.0
ACTIVE = (StudyStatus.RUNNING, StudyStatus.PAUSED)
# Advisory-lock namespaces of registrations and enqueues (PostgreSQL); the workers' use others.
_REGISTRATION_LOCK = zlib.crc32(b"finetune-hpo owner registrations") & 0x7FFFFFFF
_ENQUEUE_LOCK = zlib.crc32(b"finetune-hpo owner enqueues") & 0x7FFFFFFF


def owner_key(owner: str) -> int:
    """An owner as a 31-bit lock key (a collision only makes two owners share a lock)."""
    return zlib.crc32(owner.encode()) & 0x7FFFFFFF


def set_weight(session: Session, *, owner: str, weight: float) -> OwnerRecord:
    """Give ``owner`` ``weight`` times the default share of the fleet.

    Raises:
        ValueError: The weight is not a positive number.
    """
    if not weight > 0:
        raise ValueError(f"an owner's weight must be > 0, but got {weight=}.")
    row = session.get(OwnerRecord, owner)
    if row is None:
        row = OwnerRecord(owner=owner, weight=weight)
        session.add(row)
    else:
        row.weight = weight
    session.flush()
    return row


def list_weights(session: Session) -> list[OwnerRecord]:
    """The owners whose weight was set, by name (every other owner has weight 1)."""
    return list(session.scalars(select(OwnerRecord).order_by(OwnerRecord.owner)))


def check_study_quota(session: Session, *, owner: str, settings: Settings) -> None:
    """Refuse a new study to an owner at ``max_active_studies_per_owner``.

    On PostgreSQL the check holds a transaction lock on the owner until the caller commits,
    so concurrent registrations of one owner cannot all pass it.

    Raises:
        QuotaExceeded: The owner has that many running or paused studies.
    """
    limit = settings.max_active_studies_per_owner
    if limit is None:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_REGISTRATION_LOCK, owner_key(owner))))
    active = session.scalar(
        select(func.count())
        .select_from(StudyRecord)
        .where(StudyRecord.owner == owner, StudyRecord.status.in_(ACTIVE))
    )
    if active is not None and active >= limit:
        raise QuotaExceeded(
            f"owner {owner!r} has {active} active (running or paused) studies, the most "
            f"HPO_MAX_ACTIVE_STUDIES_PER_OWNER allows ({limit}); stop or delete one first",
            quota="max_active_studies_per_owner",
            limit=limit,
        )


def running_trials(owner: str) -> ScalarSelect[int]:
    """SQL: the owner's RUNNING trials over all their studies, whatever each study's status."""
    return (
        select(func.count())
        .select_from(trials)
        .join(optuna_studies, optuna_studies.c.study_id == trials.c.study_id)
        .join(StudyRecord, StudyRecord.name == optuna_studies.c.study_name)
        .where(StudyRecord.owner == owner, trials.c.state == "RUNNING")
        .scalar_subquery()
    )


def queued_trials(connection: Connection, *, owner: str, study: str) -> tuple[int, int]:
    """Trials clients enqueued that wait to start: in ``study``, and over all of ``owner``'s."""
    query = (
        select(func.count(), func.count().filter(optuna_studies.c.study_name == study))
        .select_from(trials)
        .join(trial_user_attributes, trial_user_attributes.c.trial_id == trials.c.trial_id)
        .join(optuna_studies, optuna_studies.c.study_id == trials.c.study_id)
        .join(StudyRecord, StudyRecord.name == optuna_studies.c.study_name)
        .where(
            StudyRecord.owner == owner,
            trials.c.state == "WAITING",
            trial_user_attributes.c.key == ENQUEUED_BY_ATTR,
        )
    )
    in_all, in_study = connection.execute(query).one()
    return in_study, in_all


def check_queue_quota(session: Session, *, owner: str, study: str, settings: Settings) -> None:
    """Refuse one more enqueued trial past ``max_queued_trials_per_study`` / ``_per_owner``.

    On PostgreSQL the check holds a transaction lock on the owner until the caller commits;
    the caller enqueues (Optuna commits on its own connection) before that, so concurrent
    enqueues of one owner cannot all pass it.

    Raises:
        QuotaExceeded: The study or the owner has that many enqueued trials waiting.
    """
    per_study = settings.max_queued_trials_per_study
    per_owner = settings.max_queued_trials_per_owner
    if per_study is None and per_owner is None:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_ENQUEUE_LOCK, owner_key(owner))))
    in_study, in_all = queued_trials(session.connection(), owner=owner, study=study)
    for count, limit, quota, where in (
        (in_study, per_study, "max_queued_trials_per_study", f"study {study!r} has"),
        (in_all, per_owner, "max_queued_trials_per_owner", f"owner {owner!r} has"),
    ):
        if limit is not None and count >= limit:
            raise QuotaExceeded(
                f"{where} {count} enqueued trials waiting to start, the most "
                f"HPO_{quota.upper()} allows ({limit}); wait for some to start",
                quota=quota,
                limit=limit,
            )
