"""Per-owner policy: the weight of an owner's fair share, and the owner's quotas.

Workers order owners by running trials per unit of weight (``hpo.core.fairshare``); an
operator sets weights with ``hpo owner weight``. Quotas are settings: registration counts
active studies here, and a worker counts running trials here under the owner's lock.
"""

from __future__ import annotations

import zlib

from sqlalchemy import ScalarSelect, func, select
from sqlalchemy.orm import Session

from hpo.core.db import OwnerRecord, StudyRecord, StudyStatus
from hpo.core.errors import QuotaExceeded
from hpo.core.optuna_tables import studies as optuna_studies
from hpo.core.optuna_tables import trials
from hpo.core.settings import Settings

DEFAULT_WEIGHT = 1.0
ACTIVE = (StudyStatus.RUNNING, StudyStatus.PAUSED)
# Advisory-lock namespace of registrations (PostgreSQL); the workers' locks use others.
_REGISTRATION_LOCK = zlib.crc32(b"finetune-hpo owner registrations") & 0x7FFFFFFF


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
