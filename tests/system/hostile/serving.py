"""`hpo serve` as an operator starts it (its uvicorn settings, no trusted proxy), for the hostile
API tests, on a PostgreSQL database of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from hpo.core.db import Database
from hpo.core.tokens import create_token
from tests.pg import _free_port
from tests.workers import wait_healthy


@dataclass
class Serve:
    base_url: str
    database_url: str
    data: Path

    def token(self, owner: str) -> str:
        with Database(self.database_url) as db, db.session() as session:
            return create_token(session, name=f"{owner}-{uuid.uuid4().hex[:6]}", owner=owner)

    def client(self, owner: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(owner)}"} if owner else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.base_url.removeprefix("http://").split(":")
        return host, int(port)


@contextmanager
def serving(database_url: str, work: Path, **env: str) -> Iterator[Serve]:
    """`hpo serve` on ``database_url`` with ``env`` (HPO_* settings) on top of the tests'."""
    data = work / "data"
    data.mkdir()
    port = _free_port()
    environ = {k: v for k, v in os.environ.items() if k != "FORWARDED_ALLOW_IPS"}
    environ.update(
        HPO_DATABASE_URL=database_url,
        HPO_DATA_ROOTS=f'["{data}"]',
        HPO_ARTIFACT_DIR=str(work / "artifacts"),
        **env,
    )
    with (work / "api.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpo", "serve", "--port", str(port), "--no-migrate"],
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        yield Serve(base_url=base, database_url=database_url, data=data)
    finally:
        proc.kill()
        proc.wait(timeout=30)
