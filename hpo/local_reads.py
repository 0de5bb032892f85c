"""``hpo study ...`` on ``hpo.db`` in the working folder: the service's own app, in this
process, with no server and no token.

``hpo run`` leaves its study in ``hpo.db`` (and its adapters in ``./artifacts``); reading it
back through the app rather than beside it keeps one code path for every read: the same
routes, schemas, owner scoping and errors as ``hpo serve``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import httpx

from hpo.client import Client

DATABASE_FILE = "hpo.db"


def local_database(workdir: Path) -> Path | None:
    """The working folder's ``hpo.db`` when ``hpo study`` should read it: it exists and
    ``HPO_API_URL`` does not name a service to ask instead."""
    found = workdir / DATABASE_FILE
    return found if "HPO_API_URL" not in os.environ and found.is_file() else None


@contextmanager
def local_client(workdir: Path) -> Iterator[Client]:
    """A client of the app served in this process on ``workdir``'s ``hpo.db``, as ``hpo run``
    left it (adapters in ``./artifacts`` or ``HPO_ARTIFACT_DIR``, owner ``local``)."""
    # starlette's in-process transport (an httpx.Client) runs the app's lifespan and routes
    from fastapi.testclient import TestClient

    from hpo.local import local_settings
    from service.app import create_app

    workdir = workdir.resolve()
    settings = local_settings(workdir, f"sqlite:///{workdir / DATABASE_FILE}")
    app = create_app(settings)
    url = "http://hpo.local"
    with TestClient(app, base_url=url, raise_server_exceptions=False) as http:
        # httpx's interface, though starlette builds it on httpx2 where that is installed
        yield Client(url, http=cast(httpx.Client, http))
