"""``hpo serve --workers 2``: two processes on one port, each building the app from the
environment, answer the API as one process does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from hpo.core.db import Database
from hpo.core.tokens import create_token
from tests.pg import _free_port
from tests.specs import minimal_spec
from tests.workers import wait_healthy, wait_until


def _children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def test_two_server_processes_answer_the_api(pg_url: str, tmp_path: Path) -> None:
    port = _free_port()
    env = dict(os.environ, HPO_DATABASE_URL=pg_url, HPO_ARTIFACT_DIR=str(tmp_path / "artifacts"))
    command = [sys.executable, "-m", "hpo", "serve", "--no-migrate", "--workers", "2"]
    with (tmp_path / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, timeout=180)
        # uvicorn's supervisor and its two workers (spawned: the app crossed by name)
        wait_until(lambda: len(_children(server.pid)) >= 2, timeout=60, what="two workers")
        with Database(pg_url) as db, db.session() as session:
            token = create_token(session, name="serve-processes", owner="alice")
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
            created = http.post("/studies", json=minimal_spec("two-processes"))
            assert created.status_code == 201, created.text
            # new connections each time: the kernel hands them to either process
            for _ in range(6):
                read = httpx.get(f"{base}/studies/two-processes", headers=headers, timeout=60)
                assert read.status_code == 200, read.text
                assert read.json() == created.json()
            assert httpx.get(f"{base}/studies", timeout=60).status_code == 401
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()
