"""Every malformed study is a 422 that names the bad field, and nothing is written."""

from __future__ import annotations

import httpx
import pytest

from tests.specs import minimal_spec

LLAMA = {"name_or_path": "builtin:tiny-llama"}
TEXT = {"path": "builtin:demo-text"}


def space(**dists: object) -> dict[str, object]:
    return {"space": dists}


# (body, a fragment of the error location, a fragment of the message)
MALFORMED: list[tuple[dict[str, object], str, str]] = [
    (minimal_spec("Bad Name"), "name", "pattern"),
    (minimal_spec("x" * 64), "name", "pattern"),
    ({"name": "nomodel", "train": {"dataset": TEXT}}, "model", "required"),
    (minimal_spec(model={"name_or_path": ""}), "name_or_path", "at least 1"),
    (minimal_spec(model={**LLAMA, "task": "translation"}), "task", "causal-lm"),
    (minimal_spec(surprise=1), "surprise", "not permitted"),
    (minimal_spec(model={**LLAMA, "tokenizer": "x"}), "tokenizer", "not permitted"),
    (
        minimal_spec(**space(learning_rate={"type": "float", "low": 1e-3, "high": 1e-5})),
        "space",
        "low must be < high",
    ),
    (
        minimal_spec(
            **space(learning_rate={"type": "float", "low": 0.0, "high": 1e-3, "log": True})
        ),
        "space",
        "log=true needs low > 0",
    ),
    (
        minimal_spec(**space(lora_r={"type": "int", "low": 4, "high": 10, "step": 4})),
        "space",
        "step must divide",
    ),
    (
        minimal_spec(**space(lora_r={"type": "categorical", "choices": []})),
        "choices",
        "at least 1",
    ),
    (
        minimal_spec(**space(lora_r={"type": "categorical", "choices": [[4], {"a": 1}]})),
        "choices",
        "choices must be JSON scalars",
    ),
    (
        minimal_spec(**space(momentum={"type": "float", "low": 0.1, "high": 0.9})),
        "space",
        "unknown hyperparameter 'momentum'; known ones are",
    ),
    (
        minimal_spec(**space(lora_r={"type": "normal", "low": 1, "high": 2})),
        "space",
        "does not match any of the expected tags",
    ),
    (
        minimal_spec(**space(lora_r={"type": "int", "low": 0, "high": 8})),
        "space",
        "lora_r must be >= 1",
    ),
    (
        minimal_spec(
            **space(lr_scheduler_type={"type": "categorical", "choices": ["cosine", "zigzag"]})
        ),
        "space",
        "must be one of",
    ),
    (
        minimal_spec(**space(per_device_train_batch_size={"type": "float", "low": 1, "high": 8})),
        "space",
        "is an integer",
    ),
    (minimal_spec(sampler={"type": "grid"}), "search", "finite space"),
    # a NUL byte once reached os.path.realpath and came back as a 500 (found by the fuzz test)
    (minimal_spec(model={"name_or_path": "a\x00b"}), "name_or_path", "should match pattern"),
    (minimal_spec(dataset={"path": "d\x00.jsonl"}), "path", "should match pattern"),
    (minimal_spec(sampler={"type": "annealing"}), "sampler", "does not match"),
    (minimal_spec(pruner={"type": "percentile", "percentile": 150}), "percentile", "less than"),
    (minimal_spec(budget={"max_trials": 10**9}), "max_trials", "less than or equal"),
    (minimal_spec(budget={"max_trials": 0}), "max_trials", "greater than or equal"),
    (
        minimal_spec(training={"learning_rate": 0.5, "trust_remote_code": True}),
        "training",
        "unknown training setting 'trust_remote_code'",
    ),
    (minimal_spec(training={"lora_r": 8}), "body", "both searched and fixed"),
    (
        minimal_spec(
            model={"name_or_path": "builtin:tiny-encoder", "task": "sequence-classification"}
        ),
        "body",
        "label_field is required",
    ),
    (
        minimal_spec(
            model={"name_or_path": "builtin:tiny-llama", "task": "sequence-classification"},
            dataset={**TEXT, "label_field": "label"},
        ),
        "body",
        "is a causal-lm model",
    ),
    (minimal_spec(description="d" * 2001), "description", "at most 2000"),
    (minimal_spec(dataset={**TEXT, "validation_fraction": 0.9}), "validation_fraction", "0.5"),
    (
        minimal_spec(pruner={"type": "hyperband", "min_resource": 10, "max_resource": 5}),
        "pruner",
        "max_resource must be > min_resource",
    ),
    (
        minimal_spec(**space(learning_rate={"type": "float", "low": 1e-5, "high": "big"})),
        "high",
        "valid number",
    ),
    (minimal_spec(space={}), "space", "at least 1"),
    (
        minimal_spec(objective={"metric": "eval_accuracy", "direction": "maximize"}),
        "body",
        "eval_accuracy needs task sequence-classification",
    ),
    (minimal_spec(objective={"metric": "eval_bleu"}), "metric", "eval_loss"),
    (minimal_spec(budget={"max_trial_s": 10**6}), "max_trial_s", "HPO_MAX_TRIAL_S"),
]


@pytest.mark.parametrize(("body", "where", "why"), MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_spec_is_422_naming_the_field(
    client: httpx.Client, body: dict[str, object], where: str, why: str
) -> None:
    response = client.post("/studies", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(where in [str(part) for part in e["loc"]] and why in e["msg"] for e in errors), (
        errors
    )
    assert client.get("/studies").json()["count"] == 0


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[]", b"null", b'{"name": "nan", "model": NaN}', b""],
    ids=["broken", "array", "null", "nan", "empty"],
)
def test_unparseable_bodies_are_422_json(client: httpx.Client, raw: bytes) -> None:
    response = client.post("/studies", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"]


def test_oversized_body_is_413(client: httpx.Client) -> None:
    body = minimal_spec("big", description="x" * 2_000_000)
    response = client.post("/studies", json=body)
    assert response.status_code == 413
    assert response.json()["detail"]


def test_paging_bounds(client: httpx.Client) -> None:
    response = client.get("/studies", params={"limit": 100_000})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]
    assert client.get("/studies", params={"offset": -1}).status_code == 422


def test_unknown_route_is_json_404(client: httpx.Client) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}
