"""Specs may only point at data and models under the configured roots (or hub ids)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hpo.core.settings import Settings
from tests.conftest import ApiServer
from tests.specs import minimal_spec


@pytest.fixture
def rooted(settings: Settings, tmp_path: Path) -> Iterator[httpx.Client]:
    data, models, outside = tmp_path / "data", tmp_path / "models", tmp_path / "outside"
    for folder in (data, models, outside):
        folder.mkdir()
    (data / "ok.jsonl").write_text('{"text": "hi"}\n')
    (outside / "secret.jsonl").write_text('{"text": "no"}\n')
    (data / "escape.jsonl").symlink_to(outside / "secret.jsonl")
    (models / "escape").symlink_to(outside)
    (models / "mine").mkdir()
    (models / "mine" / "config.json").write_text('{"model_type": "llama"}')
    rooted_settings = settings.model_copy(update={"data_roots": [data], "model_roots": [models]})
    with ApiServer(rooted_settings) as api, api.client() as client:
        client.headers["x-root"] = str(tmp_path)
        yield client


def _post(
    client: httpx.Client, *, data: str = "builtin:demo-text", model: str = "builtin:tiny-llama"
) -> httpx.Response:
    spec = minimal_spec("p", model={"name_or_path": model}, dataset={"path": data})
    return client.post("/studies", json=spec)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ("{root}/data/../outside/secret.jsonl", "must not contain '..'"),
        ("{root}/outside/secret.jsonl", "outside the roots the operator allowed"),
        ("/etc/passwd", "outside the roots the operator allowed"),
        ("{root}/data/escape.jsonl", "outside the roots the operator allowed"),
        ("relative/file.jsonl", "outside the roots the operator allowed"),
    ],
)
def test_dataset_paths_outside_the_roots_are_422(
    rooted: httpx.Client, data: str, why: str
) -> None:
    response = _post(rooted, data=data.format(root=rooted.headers["x-root"]))
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "train", "dataset", "path"]
    assert why in error["msg"]


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ("{root}/models/escape", "outside the roots the operator allowed"),
        ("{root}/outside", "outside the roots the operator allowed"),
        ("../../models", "must not contain '..'"),
        ("org/../../etc", "must not contain '..'"),
    ],
)
def test_model_paths_outside_the_roots_are_422(rooted: httpx.Client, model: str, why: str) -> None:
    response = _post(rooted, model=model.format(root=rooted.headers["x-root"]))
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "train", "model", "name_or_path"]
    assert why in error["msg"]


def test_allowed_places(rooted: httpx.Client) -> None:
    root = rooted.headers["x-root"]
    assert (
        _post(rooted, data=f"{root}/data/ok.jsonl", model=f"{root}/models/mine").status_code == 201
    )
    rooted.delete("/studies/p")
    assert _post(rooted, model="meta-llama/Llama-3.2-1B").status_code == 201
    assert os.path.realpath(f"{root}/data/escape.jsonl").endswith("secret.jsonl")


def test_trust_remote_code_is_not_a_spec_setting(client: httpx.Client) -> None:
    for where in ("model", "training"):
        spec = minimal_spec("rc")
        spec["train"][where] = {**spec["train"].get(where, {}), "trust_remote_code": True}
        response = client.post("/studies", json=spec)
        assert response.status_code == 422
        assert "trust_remote_code" in str(response.json())
