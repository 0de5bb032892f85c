"""``check_database`` and ``upgrade`` fail with one line a person can act on (SQLite here;
PostgreSQL, down and empty, in tests/system/test_cli_database_errors.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from hpo.core.db import make_engine
from hpo.core.errors import DatabaseNotReady, StorageUnavailable
from hpo.core.migrate import NOT_MIGRATED, VERSION_TABLE, check_database, upgrade


def test_a_missing_sqlite_file_is_named_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "hpo.db"
    with pytest.raises(DatabaseNotReady, match="HPO_DATABASE_URL") as raised:
        check_database(f"sqlite:///{path}")
    assert str(path) in str(raised.value)
    assert not path.exists()
    with pytest.raises(DatabaseNotReady, match="no database file"):
        upgrade(f"sqlite:///{path}", create=False)
    assert not path.exists()


def test_an_empty_database_says_run_hpo_db_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    make_engine(url).connect().close()  # the file exists, with no tables
    with pytest.raises(DatabaseNotReady) as raised:
        check_database(url)
    assert str(raised.value) == NOT_MIGRATED


def test_upgrade_creates_the_file_and_then_the_check_passes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    upgrade(url)
    check_database(url)


def test_tables_behind_head_say_run_hpo_db_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    upgrade(url, "0001")
    with pytest.raises(DatabaseNotReady, match=r"at revision 0001, .* run hpo db upgrade$"):
        check_database(url)


def test_tables_from_a_newer_version_say_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(DatabaseNotReady, match="upgrade finetune-hpo"):
        check_database(url)


def test_an_unknown_revision_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatabaseNotReady, match="^upgrade to nope failed: ") as raised:
        upgrade(f"sqlite:///{tmp_path / 'hpo.db'}", "nope")
    assert "\n" not in str(raised.value)


def test_an_unopenable_sqlite_file_is_unreachable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-folder' / 'hpo.db'}"
    with pytest.raises(StorageUnavailable, match="^cannot reach the database at sqlite:///"):
        upgrade(url)
