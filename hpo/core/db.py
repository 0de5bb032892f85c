"""The service's own tables (SQLAlchemy 2.x) and how to open sessions on them.

Alembic (``migrations/``) creates and changes these tables; Optuna owns its own tables in the
same database. Our tables are prefixed ``hpo_`` so the two never collide.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from hpo.core.errors import StorageUnavailable


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


NEVER_SERVED_SQL = "1970-01-01 00:00:00+00"
NEVER_SERVED = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class StudyStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    COMPLETED = "completed"
    FAILED = "failed"


class StudyRecord(Base):
    """A registered study: its spec, owner and lifecycle status."""

    __tablename__ = "hpo_studies"
    # An owner's studies newest first (warm start's ``auto``) as a walk down one index; the
    # workers' queues (``hpo.core.fairshare``) and owners' last service down two more.
    __table_args__ = (
        Index("ix_hpo_studies_owner_id", "owner", "id"),
        Index("ix_hpo_studies_queue", "status", "owner", "served_at", "id"),
        Index("ix_hpo_studies_owner_served", "owner", "served_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.RUNNING)
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    # A decode study's adapter, pinned at registration: every trial decodes with the same one.
    adapter_artifact_id: Mapped[str | None] = mapped_column(String(36), default=None)
    # How many trials the study runs, copied from the spec at registration (a spec never
    # changes) so the workers' scan reads a column, not every spec's JSON; None: a scheduler
    # decides the study's next work.
    trial_cap: Mapped[int | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    # When a worker last claimed one of its trials (by the database's clock; NEVER_SERVED
    # before the first): the fair order's "served longest ago", read down an index.
    served_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=NEVER_SERVED, server_default=text(f"'{NEVER_SERVED_SQL}'")
    )


class ApiToken(Base):
    """A bearer token; only its SHA-256 hash is stored."""

    __tablename__ = "hpo_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    owner: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class OwnerRecord(Base):
    """An owner's share of the fleet, set by an operator (``hpo owner weight``).

    Workers serve the owner with the fewest running trials per unit of weight first; an owner
    without a row has weight 1.
    """

    __tablename__ = "hpo_owners"

    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class WorkerRecord(Base):
    """A worker that is idle: it polls for work and found none (``hpo.core.fleet``).

    Busy workers are their running trials; an idle one is free until ``free_until``, a few of
    its polls ahead, unless it polls again (a worker that took a trial or left drops out).
    """

    __tablename__ = "hpo_workers"

    worker_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    free_until: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


class ArtifactRecord(Base):
    """An artifact a worker stored for a trial: the only way the API finds a file to serve.

    Trial user attributes can be written by anything that reaches Optuna's tables; this row is
    written by the worker that uploaded the file, so a path never comes from a trial.
    """

    __tablename__ = "hpo_artifacts"

    artifact_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    study_id: Mapped[int] = mapped_column(
        ForeignKey("hpo_studies.id", ondelete="CASCADE"), index=True
    )
    trial_id: Mapped[int] = mapped_column(Integer, index=True)
    trial_number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    """Each SQLite connection: foreign keys enforced, and a commit without an fsync.

    In WAL mode with ``synchronous=NORMAL`` a commit appends to the write-ahead log and the
    log is synced at checkpoints: a crash of the machine (not of a process) may lose the last
    commits, never the database's consistency. A trial writes a few dozen records; synced one
    by one they took a tenth of a second of its setup on a busy disk (bench.overhead).
    """
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with pooled connections checked before use (the database may restart)."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )

        event.listen(engine, "connect", sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_timeout", 10)
    kwargs.setdefault("connect_args", {"connect_timeout": 5})
    return create_engine(url, **kwargs)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success, rolls back on error and always closes.

    Raises:
        StorageUnavailable: The database could not be reached.
    """
    session = factory()
    try:
        yield session
        session.commit()
    except (OperationalError, DBAPIError) as exc:
        session.rollback()
        missing_table = "no such table" in str(exc.orig)  # SQLite's word for "not migrated"
        if (isinstance(exc, OperationalError) and not missing_table) or exc.connection_invalidated:
            raise StorageUnavailable(f"database unavailable: {exc.orig}") from exc
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


class Database:
    """Our tables' engine and sessions: ``with Database(url) as db, db.session() as s: ...``.

    Pass an engine to share a pool (a worker shares Optuna storage's).
    """

    def __init__(self, url_or_engine: str | Engine) -> None:
        self.engine = (
            make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        )
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> AbstractContextManager[Session]:
        """A session that commits on success (see ``session_scope``)."""
        return session_scope(self.sessions)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
