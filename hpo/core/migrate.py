"""Our Alembic migrations (``hpo db upgrade``) and the check that a database is ready for us.

Every failure here is an ``HPOError`` whose message is one line a person can act on: the CLI
prints it as is, never a driver's traceback.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import URL, make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

import migrations
from hpo.core.db import make_engine
from hpo.core.errors import DatabaseNotReady, StorageUnavailable

VERSION_TABLE = "hpo_alembic_version"  # as in migrations/env.py; Optuna has alembic_version
NOT_MIGRATED = "the database has no finetune-hpo tables; run hpo db upgrade"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def _sqlite_file(url: URL) -> Path | None:
    """The file behind a SQLite URL; None for other databases and in-memory SQLite."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def _unreachable(url: URL, exc: BaseException) -> StorageUnavailable:
    """The driver's own words, with where we tried; the URL's password never appears."""
    if url.host:
        where = f"{url.host}:{url.port or 5432}"
        hint = " (is PostgreSQL running?)" if url.get_backend_name() == "postgresql" else ""
    else:
        where, hint = url.render_as_string(hide_password=True), ""
    return StorageUnavailable(f"cannot reach the database at {where}{hint}: {_first_line(exc)}")


def _require_file(url: URL, *, create: bool) -> None:
    path = _sqlite_file(url)
    if path is not None and not create and not path.exists():
        raise DatabaseNotReady(
            f"no database file at {path.resolve()}: set HPO_DATABASE_URL (or --database-url) "
            "to your database, e.g. postgresql+psycopg2://user:pw@host/db, or create this one "
            "with hpo db upgrade"
        )


def _current_revisions(database_url: str, *, create: bool = False) -> set[str]:
    """Our tables' revisions in the database (empty when it has none); one connection.

    Raises:
        StorageUnavailable: The database server cannot be reached.
        DatabaseNotReady: The SQLite file does not exist and ``create`` is false (so
            connecting, which would create it, is not tried).
    """
    url = make_url(database_url)
    _require_file(url, create=create)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return set(context.get_current_heads())
    except OperationalError as exc:
        raise _unreachable(url, exc) from exc
    finally:
        engine.dispose()


def check_database(database_url: str) -> None:
    """Raise unless the database answers and our tables are at this code's head revision.

    Raises:
        StorageUnavailable: The database server cannot be reached.
        DatabaseNotReady: The SQLite file is missing (it is not created), or our tables are
            missing or at another revision than this code's.
    """
    current = _current_revisions(database_url)
    if not current:
        raise DatabaseNotReady(NOT_MIGRATED)
    scripts = ScriptDirectory.from_config(alembic_config(database_url))
    heads = set(scripts.get_heads())
    if current == heads:
        return
    found, wanted = ", ".join(sorted(current)), ", ".join(sorted(heads))
    if current <= {script.revision for script in scripts.walk_revisions()}:
        raise DatabaseNotReady(
            f"the database's finetune-hpo tables are at revision {found}, this version needs "
            f"{wanted}; run hpo db upgrade"
        )
    raise DatabaseNotReady(
        f"the database's finetune-hpo tables are at revision {found}, which this version does "
        "not know (a newer finetune-hpo migrated it); upgrade finetune-hpo"
    )


def _migrate(database_url: str, step: str, revision: str, *, create: bool) -> None:
    # Reachability first, so "server down" reads as such rather than as a failed migration.
    _current_revisions(database_url, create=create)
    try:
        getattr(command, step)(alembic_config(database_url), revision)
    except (SQLAlchemyError, CommandError) as exc:
        raise DatabaseNotReady(f"{step} to {revision} failed: {_first_line(exc)}") from exc


def upgrade(database_url: str, revision: str = "head", *, create: bool = True) -> None:
    """Apply our migrations up to ``revision``.

    Args:
        database_url: The database.
        revision: An Alembic revision; ``head`` is the newest.
        create: Whether a missing SQLite file is created (``hpo db upgrade``, the demo) or is
            an error (``hpo serve``).

    Raises:
        StorageUnavailable: The database server cannot be reached.
        DatabaseNotReady: The SQLite file is missing and ``create`` is false, or a migration
            failed.
    """
    _migrate(database_url, "upgrade", revision, create=create)


def downgrade(database_url: str, revision: str = "base") -> None:
    """Revert our migrations down to ``revision`` (same errors as ``upgrade``)."""
    _migrate(database_url, "downgrade", revision, create=False)
