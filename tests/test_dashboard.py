"""A study created over REST shows up in optuna-dashboard served on the same database."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import optuna_dashboard

from hpo.storage import make_storage
from tests.conftest import ApiServer, SpecFactory


class _Quiet(WSGIRequestHandler):
    def log_message(self, *_: object) -> None:
        pass


def test_study_appears_in_dashboard(
    api: ApiServer, client: httpx.Client, make_spec: SpecFactory
) -> None:
    assert client.post("/studies", json=make_spec("dash-me")).status_code == 201
    app = optuna_dashboard.wsgi(make_storage(api.settings))
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/api/studies"
        studies = httpx.get(url, timeout=30).json()["study_summaries"]
    finally:
        server.shutdown()
    assert [s["study_name"] for s in studies] == ["dash-me"]
