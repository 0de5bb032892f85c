"""Optuna's storage contract tests, run against our ``HeartbeatStorage`` on PostgreSQL.

``StorageTestCase`` comes from the Optuna wheel (``optuna.testing.pytest_storages``); the rest
(test_storages.py's overrides, the heartbeat, callback, cached-storage and multi-process tests)
is vendored unmodified in tests/optuna_storage_suite.py, whose adapter builds every storage
with ``make_storage``. Each storage is used bare and wrapped in ``_CachedStorage`` (what
``optuna.create_study`` does with it). One database serves the whole module; Optuna's tables
are emptied before each test. Run with the Optuna minor version pinned in pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import psycopg2
import pytest
from optuna.storages import BaseStorage
from optuna.storages._rdb.models import BaseModel

from tests.conftest import new_pg_database

# The vendored tests use bare asserts: have pytest rewrite them like a test module's.
pytest.register_assert_rewrite("tests.optuna_storage_suite")
from tests import optuna_storage_suite as suite  # noqa: E402

# Expected here, and noise in the report: Optuna's notes on its experimental heartbeat API and on
# asking a heartbeat storage outside Study.optimize (pytest.warns in the tests still sees them).
pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study"),
]

# Where our documented behaviour differs from plain RDBStorage on purpose.
KNOWN_DIFFERENCES = {
    "test_fail_stale_trials": pytest.mark.skip(
        reason="HeartbeatStorage writes a trial's first heartbeat when the trial is claimed "
        "(hpo/core/storage.py), so a trial from ask() outside Study.optimize, which then gets no "
        "further heartbeat, is failed as stale after the grace period; Optuna's RDBStorage "
        "never fails a trial that has no heartbeat, and this test expects it to stay RUNNING."
    ),
}

# Optuna's tables holding studies and trials, parents first (version_info is left alone).
OPTUNA_DATA_TABLES = [t.name for t in BaseModel.metadata.sorted_tables if t.name != "version_info"]


@pytest.fixture(scope="module")
def contract_database_url(pg_admin_url: str, pg_template: str) -> str:
    """One migrated database (our tables and Optuna's) shared by this module's tests."""
    return new_pg_database(pg_admin_url, template=pg_template.rsplit("/", 1)[1])


@pytest.fixture(autouse=True)
def empty_database(contract_database_url: str) -> Iterator[str]:
    """Every test starts from an empty storage: no studies, no trials (ids keep counting up).

    DELETE, children first, is ~10x faster than TRUNCATE on these small tables.
    """
    dsn = contract_database_url.replace("postgresql+psycopg2://", "postgresql://")
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SET lock_timeout = '10s'")  # a leaked transaction fails loudly, not hangs
        for table in reversed(OPTUNA_DATA_TABLES):
            cur.execute(f"DELETE FROM {table}")
        conn.commit()
    suite.use_database(contract_database_url)
    yield contract_database_url
    suite.use_database(None)


@pytest.fixture(params=suite.STORAGE_MODES_HEARTBEAT)
def storage(request: pytest.FixtureRequest, empty_database: str) -> Iterator[BaseStorage]:
    with suite.StorageSupplier(request.param) as storage:
        yield storage


class TestHeartbeatStorage(suite.TestStorage):
    """Optuna's ``StorageTestCase`` with test_storages.py's overrides, on our storage."""


# The vendored module-level tests, collected as this module's.
for _name, _test in vars(suite).copy().items():
    if _name.startswith("test_"):
        globals()[_name] = KNOWN_DIFFERENCES[_name](_test) if _name in KNOWN_DIFFERENCES else _test
