"""Alembic owns our tables; upgrade -> downgrade -> upgrade works on PostgreSQL."""

from __future__ import annotations

from sqlalchemy import inspect

from hpo.core.db import Base, make_engine
from hpo.core.migrate import downgrade, upgrade
from tests.conftest import new_pg_database

OURS = {"hpo_studies", "hpo_tokens", "hpo_artifacts", "hpo_owners"}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(pg_admin_url: str) -> None:
    url = new_pg_database(pg_admin_url, template=None)
    upgrade(url)
    assert OURS | {"hpo_alembic_version"} <= _tables(url)
    downgrade(url, "base")
    assert not OURS & _tables(url)
    upgrade(url)
    assert _tables(url) >= OURS


def test_models_match_the_migrations(pg_admin_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    url = new_pg_database(pg_admin_url, template=None)
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_object": lambda o, n, t, *_: t != "table" or n in OURS}
        )
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()
