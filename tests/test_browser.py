"""optuna-dashboard, checked as a person would: headless Chromium renders a finished study."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna_dashboard
import pytest

from hpo.settings import Settings
from hpo.storage import make_storage
from tests.conftest import ApiServer
from tests.workers import small_study
from worker.loop import Worker

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)"
    ),
]


class _Quiet(WSGIRequestHandler):
    def log_message(self, *_: object) -> None:
        pass


def _render(url: str, profile: Path) -> str:
    """The page's text after its scripts ran, as Chromium renders it."""
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.fixture
def dashboard(pg_settings: Settings) -> Iterator[str]:
    server = make_server(
        "127.0.0.1", 0, optuna_dashboard.wsgi(make_storage(pg_settings)), handler_class=_Quiet
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_dashboard_shows_a_finished_study(
    pg_api: ApiServer, dashboard: str, tmp_path: Path
) -> None:
    spec = small_study("in-browser", budget={"max_trials": 2}, pruner={"type": "none"})
    oom = {"per_device_train_batch_size": 16, "lora_r": 4, "learning_rate": 1e-3}
    with pg_api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        assert client.post("/studies/in-browser/trials", json={"params": oom}).status_code == 201
    settings = pg_api.settings.model_copy(
        update={"inject_oom": json.dumps({"per_device_train_batch_size": 16})}
    )
    Worker(settings, idle_exit=0.5, cpu_threads=1).run(handle_signals=False)

    home = _render(f"{dashboard}/dashboard", tmp_path / "profile")
    assert "in-browser" in home
    page = _render(f"{dashboard}/dashboard/studies/1/trials", tmp_path / "profile")
    assert "in-browser" in page
    assert {"Trial 0", "Trial 1", "Trial 2"} <= set(re.findall(r"Trial \d+", page))
    # The first trial shown is the failed OOM one, with our user attrs
    assert "Fail" in page
    assert "fail_reason oom" in page
    assert "device_seconds" in page
