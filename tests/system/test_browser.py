"""optuna-dashboard, checked as a person would: headless Chromium signs in to the service with
a token and renders a finished study."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import optuna
import pytest
from typer.testing import CliRunner

from hpo.cli import app
from hpo.core.db import Database
from hpo.core.migrate import upgrade
from hpo.core.spec import StudySpec
from hpo.core.storage import make_storage
from hpo.core.studies import create_study
from hpo.local import local_settings
from tests.conftest import ApiServer
from tests.specs import minimal_spec
from tests.worker_process import oom_when
from tests.workers import small_study
from worker.loop import Worker
from worker.objective import make_objective

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)"
    ),
]

# Posts the token to /login as the login form does. Without ?next it submits the form and the
# browser follows the service's redirect to /dashboard. With ?next it posts first, then opens
# that page: synchronously, as headless Chromium's virtual time hangs on a navigation started
# after the page has loaded.
SIGN_IN = """<!doctype html>
<form method="post" action="/login"><input type="hidden" name="token" value="{token}">
</form>
<script>
const form = document.forms[0];
const next = new URLSearchParams(location.search).get("next");
if (next === null) {{
  form.submit();
}} else {{
  const post = new XMLHttpRequest();
  post.open("POST", form.action, false);
  post.setRequestHeader("Content-Type", "application/x-www-form-urlencoded");
  post.send(new URLSearchParams(new FormData(form)).toString());
  location.href = next;
}}
</script>
"""
# Hop-by-hop headers, and those httpx's decoded body no longer matches.
_NOT_PASSED = frozenset({"connection", "transfer-encoding", "content-length", "content-encoding"})


class _SameOrigin(BaseHTTPRequestHandler):
    """The sign-in page at /sign-in.html and the service behind every other path, with the
    browser's Host passed on: the page's login post is same-origin, as /login requires."""

    page: bytes
    api: str

    def _forward(self) -> None:
        if urlsplit(self.path).path == "/sign-in.html":
            status, headers, body = 200, [("Content-Type", "text/html")], self.page
        else:
            length = int(self.headers.get("content-length") or 0)
            sent = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_PASSED}
            answer = httpx.request(
                self.command,
                self.api + self.path,
                headers=sent,
                content=self.rfile.read(length),
                timeout=60,
            )
            status, body = answer.status_code, answer.content
            headers = [
                (k, v) for k, v in answer.headers.multi_items() if k.lower() not in _NOT_PASSED
            ]
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _forward

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def sign_in_page(pg_api: ApiServer) -> Iterator[str]:
    """The sign-in page, on the service's origin (through ``_SameOrigin``).

    A page of another origin would not do: the service refuses its login post (login CSRF).
    """
    page = SIGN_IN.format(token=pg_api.token("alice")).encode()
    handler = type("Handler", (_SameOrigin,), {"page": page, "api": pg_api.base_url})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/sign-in.html"
    server.shutdown()
    server.server_close()


def _render(url: str, profile: Path) -> str:
    """The page's text after its scripts ran, as Chromium renders it."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", _dom(url, profile)))


def _dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, as Chromium renders it."""
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def test_dashboard_shows_a_finished_study(
    pg_api: ApiServer, sign_in_page: str, tmp_path: Path
) -> None:
    spec = small_study("in-browser", budget={"max_trials": 2}, pruner={"type": "none"})
    oom = {"per_device_train_batch_size": 16, "lora_r": 4, "learning_rate": 1e-3}
    with pg_api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        assert client.post("/studies/in-browser/trials", json={"params": oom}).status_code == 201
        # Another owner's study, which alice's browser must not show.
        with pg_api.client("bob") as bob:
            assert bob.post("/studies", json=small_study("bobs-study")).status_code == 201
    objective = functools.partial(
        make_objective, extra_callbacks=oom_when({"per_device_train_batch_size": 16})
    )
    Worker(
        pg_api.settings,
        studies=["in-browser"],
        idle_exit=0.5,
        cpu_threads=1,
        objective_factory=objective,
    ).run(handle_signals=False)

    home = _render(sign_in_page, tmp_path / "profile-home")
    assert "in-browser" in home
    assert "bobs-study" not in home
    assert "Read-only dashboard" in home  # the banner survives the frontend's rendering
    trials_page = f"{sign_in_page}?next={quote('/dashboard/studies/1/trials')}"
    page = _render(trials_page, tmp_path / "profile-trials")
    assert "in-browser" in page
    assert {"Trial 0", "Trial 1", "Trial 2"} <= set(re.findall(r"Trial \d+", page))
    # The first trial shown is the failed OOM one, with our user attrs
    assert "Fail" in page
    assert "fail_reason oom" in page
    assert "device_seconds" in page


def test_the_report_opens_offline_with_its_plots_drawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hpo report` in the folder `hpo run` left (no server): one HTML file that a browser
    with no network draws, every figure by plotly.js from the page itself."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    settings = local_settings(tmp_path, url)
    upgrade(url)
    storage = make_storage(settings)
    space = {
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "lora_r": {"type": "categorical", "choices": [4, 8, 16]},
    }
    spec = StudySpec.model_validate(minimal_spec("reported", space=space))
    with Database(url) as db, db.session() as session:
        create_study(session, storage, spec=spec, owner="local", settings=settings)
    storage.engine.dispose()
    storage = optuna.storages.RDBStorage(url)  # a plain one: no heartbeat outside optimize()
    study = optuna.load_study(study_name="reported", storage=storage)
    for i in range(4):  # what workers write: a curve on the fidelity axis, then the value
        trial = study.ask()
        lr = trial.suggest_float("learning_rate", 1e-5, 1e-2, log=True)
        trial.suggest_categorical("lora_r", [4, 8, 16])
        for step in (64, 128, 192):
            trial.report(2.0 - i * 0.1 - step / 256 + lr, step)
        study.tell(trial, 1.0 - i * 0.1 + lr)
    storage.engine.dispose()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_API_URL", raising=False)
    written = CliRunner().invoke(app, ["report", "reported", "--out", "report.html"])
    assert written.exit_code == 0, written.output

    dom = _dom((tmp_path / "report.html").as_uri(), tmp_path / "profile-report")
    assert dom.count('class="main-svg"') >= 3  # plotly.js drew every figure
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    for title in (
        "Intermediate Values Plot",
        "Optimization History Plot",
        "Hyperparameter Importances",
    ):
        assert title in text
    assert "best configuration" in text and "lora_r" in text
