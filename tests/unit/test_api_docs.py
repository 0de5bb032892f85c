"""/docs and /redoc work offline: every asset they load is served by the app itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hpo.core.settings import Settings
from service.app import create_app

# What a page loads: src=, href=, ReDoc's spec-url= and Swagger UI's `url: '...'`.
LOADED = re.compile(r"""(?:src=|href=|spec-url=|url: )["']([^"']+)["']""")
CONTENT_TYPES = {
    ".js": "javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    # No `with`: the lifespan (which opens the database) is not needed to serve the docs.
    return TestClient(create_app(Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}")))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "://" not in response.text  # no CDN, no Google Fonts: nothing from elsewhere
    urls = LOADED.findall(response.text)
    assert "/openapi.json" in urls
    assert {Path(u).suffix for u in urls} >= {".js", ".png"}
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert CONTENT_TYPES[Path(url).suffix] in asset.headers["content-type"], url
        assert len(asset.content) > 1000, url


def test_docs_are_not_in_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]
