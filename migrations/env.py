"""Alembic environment for the service's own tables (Optuna migrates its own)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from hpo.core.db import Base, make_engine
from hpo.core.settings import get_settings

VERSION_TABLE = "hpo_alembic_version"  # Optuna keeps its own alembic_version table


def _include(obj: object, name: str | None, type_: str, *_: object) -> bool:
    return type_ != "table" or (name or "").startswith("hpo_")


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    context.configure(
        connection=connection,
        url=url,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        include_object=_include,
        render_as_batch=True,  # SQLite needs batch mode for ALTER TABLE
    )


def run() -> None:
    config = context.config
    url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
    if context.is_offline_mode():
        _configure(url=url)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url)
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
