"""``hpo worker``, ``hpo serve`` and ``hpo db upgrade`` on a database they cannot use: one line
on stderr naming the problem and the fix, exit code 1, no traceback, no file created."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import new_pg_database
from tests.pg import _free_port

PASSWORD = "s3cret-pw"
NOT_MIGRATED = "error: the database has no finetune-hpo tables; run hpo db upgrade"


def hpo(*args: str, cwd: Path, database_url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPO_")}
    if database_url is not None:
        env["HPO_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


COMMANDS = [
    pytest.param(("worker", "--idle-exit", "1"), id="worker"),
    pytest.param(("serve", "--port", "1"), id="serve"),
    pytest.param(("serve", "--no-migrate", "--port", "1"), id="serve-no-migrate"),
]


@pytest.mark.parametrize("args", [*COMMANDS, pytest.param(("db", "upgrade"), id="db-upgrade")])
def test_database_down(args: tuple[str, ...], tmp_path: Path) -> None:
    port = _free_port()  # bound and released: nothing listens there
    url = f"postgresql+psycopg2://hpo:{PASSWORD}@127.0.0.1:{port}/hpo"
    line = one_line_error(hpo(*args, cwd=tmp_path, database_url=url))
    assert line.startswith(
        f"error: cannot reach the database at 127.0.0.1:{port} (is PostgreSQL running?): "
    ), line
    assert "Connection refused" in line
    assert PASSWORD not in line


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("worker", "--idle-exit", "1"), id="worker"),
        pytest.param(("serve", "--no-migrate", "--port", "1"), id="serve-no-migrate"),
    ],
)
def test_database_not_migrated(args: tuple[str, ...], pg_admin_url: str, tmp_path: Path) -> None:
    url = new_pg_database(pg_admin_url, template=None)
    assert one_line_error(hpo(*args, cwd=tmp_path, database_url=url)) == NOT_MIGRATED


def test_worker_starts_once_upgraded(pg_admin_url: str, tmp_path: Path) -> None:
    url = new_pg_database(pg_admin_url, template=None)
    upgraded = hpo("db", "upgrade", cwd=tmp_path, database_url=url)
    assert upgraded.returncode == 0, upgraded.stderr
    worker = hpo("worker", "--idle-exit", "0.5", cwd=tmp_path, database_url=url)
    assert worker.returncode == 0, worker.stderr
    assert '"event": "worker_exit"' in worker.stderr


@pytest.mark.parametrize("args", COMMANDS)
@pytest.mark.parametrize("configured", [True, False], ids=["HPO_DATABASE_URL", "default"])
def test_missing_sqlite_file(args: tuple[str, ...], configured: bool, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}" if configured else None
    line = one_line_error(hpo(*args, cwd=tmp_path, database_url=url))
    assert line.startswith("error: no database file at "), line
    assert "set HPO_DATABASE_URL" in line
    assert list(tmp_path.iterdir()) == []  # nothing created, the default ./hpo.db included
