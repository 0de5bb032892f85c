"""Adapters across nodes through an S3-compatible bucket: a worker process uploads, an
``hpo serve`` process downloads, neither touches a local artifact folder.

The bucket lives in moto's server (``python -m moto.server``), an S3 emulator run as its own
process on loopback and reached over HTTP like MinIO or AWS would be.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from hpo.core.db import Database
from hpo.core.settings import Settings
from hpo.core.tokens import create_token
from tests.pg import _free_port
from tests.workers import small_study, wait_until, worker_env

pytestmark = pytest.mark.slow
BUCKET = "hpo-test"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    """An S3 emulator process with one empty bucket."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with (tmp_path / "moto.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        client = boto3.client("s3", endpoint_url=endpoint, **_keys())

        def up() -> bool:
            try:
                client.create_bucket(Bucket=BUCKET)
            except Exception:  # not listening yet
                return False
            return True

        wait_until(up, timeout=30, what="the S3 emulator")
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


def _keys() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Settings, dict[str, str]], str]]:
    """``hpo serve`` as its own process; returns its base URL."""
    started: list[subprocess.Popen[bytes]] = []

    def start(settings: Settings, env: dict[str, str]) -> str:
        port = _free_port()
        with (tmp_path / "api.log").open("wb") as log:
            started.append(
                subprocess.Popen(
                    [sys.executable, "-m", "hpo", "serve", "--port", str(port)],
                    env=worker_env(settings, **env),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=60, what="hpo serve")
        return base

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(timeout=30)


def test_adapter_uploaded_by_a_worker_downloads_through_another_process(
    pg_settings: Settings,
    s3_endpoint: str,
    serve: Callable[[Settings, dict[str, str]], str],
    spawn_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    env = {
        **CREDENTIALS,
        "HPO_ARTIFACT_STORE": f"s3://{BUCKET}/adapters",
        "HPO_S3_ENDPOINT_URL": s3_endpoint,
    }
    base = serve(pg_settings, env)
    with Database(pg_settings.database_url) as db, db.session() as session:
        token = create_token(session, name="s3", owner="alice")
    auth = {"Authorization": f"Bearer {token}"}
    spec = small_study("via-s3", budget={"max_trials": 2}, pruner={"type": "none"})
    assert httpx.post(f"{base}/studies", json=spec, headers=auth).status_code == 201

    worker = spawn_worker(pg_settings, "worker", "--idle-exit", "2", **env)
    assert worker.wait(timeout=300) == 0

    best = httpx.get(f"{base}/studies/via-s3/best/adapter", headers=auth, timeout=30)
    assert best.status_code == 200, best.text
    with zipfile.ZipFile(io.BytesIO(best.content)) as archive:
        assert "adapter_config.json" in archive.namelist()
    client = boto3.client("s3", endpoint_url=s3_endpoint, **_keys())
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys and all(k.startswith("adapters/") for k in keys)
    assert not pg_settings.artifact_dir.exists()  # nothing went to a local folder

    assert httpx.delete(f"{base}/studies/via-s3", headers=auth).status_code == 204
    wait_until(
        lambda: not client.list_objects_v2(Bucket=BUCKET).get("Contents"),
        timeout=10,
        what="the study's adapters to leave the bucket",
    )
