"""docker-compose.yml and the code cannot drift apart: each service's command runs natively.

There is no Docker engine on CI machines, so this parses the compose file, fills in the
environment from .env.example (pointing at the test PostgreSQL, adapters in a folder) and runs
the api (which also serves optuna-dashboard) and worker commands as processes. Only the bind
address and port are swapped for local ones; the worker's `--gpus all` finds no GPU here and
runs one CPU process.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ApiServer, _free_port
from tests.workers import small_study, trials, wait_healthy, worker_env

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
pytestmark = pytest.mark.slow


def _dotenv(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.startswith("#")}


def _command(service: str, env: dict[str, str], **swap: str) -> list[str]:
    command = [
        re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], part)
        for part in COMPOSE["services"][service]["command"]
    ]
    for flag, value in swap.items():
        command[command.index(f"--{flag}") + 1] = value
    # The console scripts installed beside this interpreter, as in the image.
    return [str(Path(sys.executable).parent / command[0]), *command[1:]]


@contextmanager
def _running(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_compose_shape() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "minio", "minio-init", "api", "worker"}
    # Only the api is published, on loopback: other machines reach it through a TLS proxy.
    assert {name for name, s in services.items() if "ports" in s} == {"api"}
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]
    assert services["api"]["restart"] == services["worker"]["restart"] == "unless-stopped"
    assert "healthcheck" in services["postgres"]
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # One worker container takes every GPU and runs a process per GPU (no --scale).
    device = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["count"] == "all" and "gpu" in device["capabilities"]
    assert services["worker"]["command"][1:] == ["worker", "--gpus", "all"]
    assert services["worker"]["stop_grace_period"] == "60s"
    assert "ports" not in services["worker"] and "container_name" not in services["worker"]
    assert services["worker"]["environment"] == services["api"]["environment"]
    dotenv = _dotenv(ROOT / ".env.example")
    bucket = dotenv["HPO_ARTIFACT_STORE"].removeprefix("s3://").split("/")[0]
    assert services["minio-init"]["command"][-1] == f"minio/{bucket}"
    assert services["api"]["depends_on"]["minio-init"]["condition"] == (
        "service_completed_successfully"
    )
    env_keys = set(dotenv)
    used = set(re.findall(r"\$\{(\w+)\}", (ROOT / "docker-compose.yml").read_text()))
    assert used <= env_keys, used - env_keys
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_services_run_natively(pg_api: ApiServer, tmp_path: Path) -> None:
    settings = pg_api.settings
    env = {
        **_dotenv(ROOT / ".env.example"),
        "HPO_DATABASE_URL": settings.database_url,
        "HPO_ARTIFACT_DIR": str(settings.artifact_dir),
        "HPO_ARTIFACT_STORE": "",  # the folder choice; the S3 path has its own test
    }
    # PYTHONPATH: this checkout's code under the installed console scripts.
    process_env = {**worker_env(settings), **env, "PYTHONPATH": str(ROOT)}
    api_port = _free_port()
    api_cmd = _command("api", env, host="127.0.0.1", port=str(api_port))
    worker_cmd = [*_command("worker", env), "--max-trials", "1", "--cpu-threads", "1"]

    with _running(api_cmd, process_env, tmp_path / "api.log"):
        api = f"http://127.0.0.1:{api_port}"
        wait_healthy(api)
        auth = {"Authorization": f"Bearer {pg_api.token('compose')}"}
        created = httpx.post(
            f"{api}/studies",
            json=small_study("composed", budget={"max_trials": 1}),
            headers=auth,
        )
        assert created.status_code == 201, created.text
        # The api serves the dashboard, to its token holders only.
        assert httpx.get(f"{api}/api/studies").status_code == 401
        studies = httpx.get(f"{api}/api/studies", headers=auth).json()["study_summaries"]
        assert [s["study_name"] for s in studies] == ["composed"]
        worker = subprocess.run(
            worker_cmd, env=process_env, cwd=ROOT, capture_output=True, timeout=300
        )
        assert worker.returncode == 0, worker.stderr[-2000:]
    finished = [t for t in trials(settings, "composed") if t.state.is_finished()]
    assert len(finished) == 1
