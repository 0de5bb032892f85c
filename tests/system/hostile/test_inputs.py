"""Issue 20, bounded untrusted work: what one tenant's inputs make the API or a worker compute is
bounded, against the real API on PostgreSQL and a real worker process.

Rows of the issue: 1 (catastrophic regex), 2 (a looping chat template), 3 and 4 (FIFOs where
files are read), 5 (a GGUF header claiming 2^28 strings), 6 (a directory link out of the roots),
10 (a 1.5 GB line), 11 (malformed JSON metadata). Hostile files live in the test's tmp dir:
large ones sparse (truncate), FIFOs from os.mkfifo.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import httpx
import pytest
from optuna.trial import TrialState

from hpo.core.records import FAIL_REASON_ATTR, is_infeasible_record
from hpo.core.settings import Settings
from tests.conftest import ApiServer
from tests.specs import minimal_spec, study_spec
from tests.workers import small_study, trials, wait_until
from worker import builtin

Spawn = Callable[..., subprocess.Popen[bytes]]
LOOPING_TEMPLATE = (
    "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
    "{% for m in messages %}{{ m['content'] }}{% endfor %}"
)


@pytest.fixture
def rooted(pg_settings: Settings, tmp_path: Path) -> Iterator[ApiServer]:
    """The API with the test's tmp dir as its only data and model root."""
    (tmp_path / "data").mkdir()
    (tmp_path / "models").mkdir()
    settings = pg_settings.model_copy(
        update={"data_roots": [tmp_path / "data"], "model_roots": [tmp_path / "models"]}
    )
    with ApiServer(settings) as api:
        yield api


def _refused(api: ApiServer, spec: dict[str, Any]) -> dict[str, Any]:
    """The first error of a registration that must be a 422."""
    with api.client() as client:
        response = client.post("/studies", json=spec)
    assert response.status_code == 422, response.text
    error: dict[str, Any] = response.json()["detail"][0]
    return error


def _registered(api: ApiServer, spec: dict[str, Any]) -> None:
    with api.client() as client:
        response = client.post("/studies", json=spec)
    assert response.status_code == 201, response.text


def _saved(folder: Path, **splits: list[str]) -> Path:
    """A datasets.save_to_disk folder of text splits."""
    datasets.DatasetDict(
        {name: datasets.Dataset.from_dict({"text": rows}) for name, rows in splits.items()}
    ).save_to_disk(str(folder))
    return folder


def _arrow_file(folder: Path) -> Path:
    (found,) = folder.rglob("*.arrow")
    return found


def _fifo_in_place_of(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _gguf_header(*entries: bytes) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries)) + b"".join(entries)


def _claiming_strings(count: int) -> bytes:
    """A metadata entry: the token list, a string array claiming ``count`` items."""
    key = b"tokenizer.ggml.tokens"
    return struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, count)


def _hostile_gguf(path: Path) -> None:
    """Row 5: 2 GiB, sparse, claiming a string array of 2^28 items."""
    path.write_bytes(_gguf_header(_claiming_strings(2**28)))
    os.truncate(path, 2 * 2**30)


# --- the API: registration reads only regular files, bounded -----------------------------------


def test_patterns_re2_refuses_are_422_on_the_pattern(rooted: ApiServer) -> None:
    """Row 1 at registration: what cannot run in linear time never reaches a worker."""
    for pattern in (r"(a)\1", r"(?=a)a", "a" * 513):
        spec = study_spec(
            "regex",
            mode="decode",
            model={"name_or_path": "builtin:tiny-llama"},
            dataset={"path": "builtin:demo-text"},
            objective={"metric": "regex", "pattern": pattern},
        )
        error = _refused(rooted, spec)
        assert error["loc"][:4] == ["body", "search", "objective", "pattern"], error


def test_fifos_are_refused_without_blocking_the_api(rooted: ApiServer, tmp_path: Path) -> None:
    """Rows 3 and 4 at registration: a FIFO as dataset_info.json, as a data file or as the
    dataset itself is a 422 at once, and the API goes on serving every owner."""
    info = _saved(tmp_path / "data" / "info-fifo", train=["a b"] * 4)
    _fifo_in_place_of(info / "train" / "dataset_info.json")
    arrow = _saved(tmp_path / "data" / "arrow-fifo", train=["a b"] * 4)
    _fifo_in_place_of(_arrow_file(arrow))
    os.mkfifo(tmp_path / "data" / "rows.jsonl")
    for path in (info, arrow, tmp_path / "data" / "rows.jsonl"):
        error = _refused(rooted, minimal_spec("fifo", dataset={"path": str(path)}))
        assert error["loc"] == ["body", "train", "dataset", "path"]
        assert "FIFO" in error["msg"], error
    assert httpx.get(f"{rooted.base_url}/healthz").status_code == 200
    with rooted.client("bob") as bob:
        assert bob.get("/studies").status_code == 200


def test_a_gguf_claiming_more_than_it_holds_is_422(rooted: ApiServer, tmp_path: Path) -> None:
    """Row 5 at registration: the header's counts are checked against the file's size."""
    gguf = tmp_path / "models" / "huge.gguf"
    _hostile_gguf(gguf)
    error = _refused(rooted, minimal_spec("gguf", model={"name_or_path": str(gguf)}))
    assert error["loc"] == ["body", "train", "model", "name_or_path"]
    assert "claims 268435456 items" in error["msg"], error


def test_a_directory_link_out_of_the_roots_is_422(rooted: ApiServer, tmp_path: Path) -> None:
    """Row 6: ``train`` of a save_to_disk folder links to a folder outside the roots."""
    outside = _saved(tmp_path / "outside", train=["secret label"] * 4)
    folder = _saved(tmp_path / "data" / "linked", train=["a b"] * 4)
    shutil.rmtree(folder / "train")
    (folder / "train").symlink_to(outside / "train", target_is_directory=True)
    spec = minimal_spec("linked", dataset={"path": str(folder)})
    error = _refused(rooted, spec)
    assert error["loc"] == ["body", "train", "dataset", "path"]
    assert "leads outside the roots" in error["msg"], error


def test_a_line_longer_than_the_read_bound_is_422(rooted: ApiServer, tmp_path: Path) -> None:
    """Row 10: 1.5 GB without a newline (sparse), as CSV and as JSONL: the API reads its
    bounded head and answers 422."""
    for name, head in (("wide.csv", b"text,label"), ("wide.jsonl", b'{"text": "')):
        path = tmp_path / "data" / name
        path.write_bytes(head)
        os.truncate(path, 1536 * 2**20)
        error = _refused(rooted, minimal_spec("wide", dataset={"path": str(path)}))
        assert error["loc"] == ["body", "train", "dataset", "path"]
        assert "longer than" in error["msg"] and name in error["msg"], error


def test_malformed_json_is_422_naming_the_file(rooted: ApiServer, tmp_path: Path) -> None:
    """Row 11: JSON nested past the parser's recursion limit, and metadata of the wrong
    shapes, are 422s naming the file (they were 500s)."""
    data = tmp_path / "data"
    (data / "deep.jsonl").write_text("[" * 200_000 + "\n")
    splits = _saved(data / "splits", train=["a b"] * 4)
    (splits / "dataset_dict.json").write_text('{"splits": 5}')
    features = _saved(data / "features", train=["a b"] * 4)
    (features / "train" / "dataset_info.json").write_text('{"features": 5}')
    cases = [
        (data / "deep.jsonl", "deep.jsonl"),
        (splits, "dataset_dict.json"),
        (features, "dataset_info.json"),
    ]
    for path, named in cases:
        error = _refused(rooted, minimal_spec("malformed", dataset={"path": str(path)}))
        assert error["loc"] == ["body", "train", "dataset", "path"]
        assert named in error["msg"], error


# --- a worker: hostile trials end with a reason, and the worker goes on -----------------------


def _looping_template_model(models: Path, cache: Path) -> Path:
    """Row 2: the tiny built-in Llama with a chat template that loops 99,999^2 times."""
    folder = models / "looping"
    shutil.copytree(builtin.resolve("builtin:tiny-llama", cache), folder)
    (folder / "chat_template.jinja").write_text(LOOPING_TEMPLATE)
    return folder


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_hostile_trials_fail_with_a_reason_and_the_worker_goes_on(
    rooted: ApiServer, tmp_path: Path, spawn_worker: Spawn
) -> None:
    """Rows 1, 2, 4 and 5 in one worker process: the catastrophic pattern scores in linear
    time; the looping template, the FIFO swapped in after registration and the GGUF header
    rewritten after registration each fail their trial with a reason; then a normal study
    registered afterwards completes on the same worker."""
    data, models = tmp_path / "data", tmp_path / "models"
    settings = rooted.settings
    once = {"budget": {"max_trials": 1, "max_failures_in_a_row": 1}, "pruner": {"type": "none"}}
    a36 = [{"prompt": f"say {i}", "completion": "a" * 36} for i in range(8)]
    _registered(
        rooted,
        study_spec(
            "regex",
            mode="decode",
            model={"name_or_path": "builtin:tiny-llama"},
            dataset={"path": _jsonl(data / "a.jsonl", a36), "validation_fraction": 0.5},
            training={"max_new_tokens": 4},
            evaluation={"generation": {"max_examples": 4}},
            space={"temperature": {"type": "float", "low": 0.5, "high": 1.0}},
            objective={"metric": "regex", "pattern": "(a+)+b"},
            **once,
        ),
    )
    chat = [
        {
            "messages": [
                {"role": "user", "content": "two cups?"},
                {"role": "assistant", "content": "two cups ."},
            ]
        }
    ] * 8
    _registered(
        rooted,
        small_study(
            "template",
            model={"name_or_path": str(_looping_template_model(models, settings.cache_dir))},
            dataset={"path": _jsonl(data / "chat.jsonl", chat)},
            **once,
        ),
    )
    arrow = _saved(data / "arrow", train=["ada has two cups ."] * 16)
    _registered(rooted, small_study("fifo", dataset={"path": str(arrow)}, **once))
    _fifo_in_place_of(_arrow_file(arrow))
    gguf = models / "model.gguf"
    gguf.write_bytes(_gguf_header())
    _registered(rooted, small_study("gguf", model={"name_or_path": str(gguf)}, **once))
    _hostile_gguf(gguf)
    spawn_worker(
        settings,
        "w",
        "--idle-exit",
        "120",
        HPO_PREPARE_TIMEOUT="10",
        HPO_DATA_ROOTS=json.dumps([str(data)]),
        HPO_MODEL_ROOTS=json.dumps([str(models)]),
    )

    def finished(name: str) -> Any:
        found = trials(settings, name)
        return found if found and all(t.state.is_finished() for t in found) else None

    outcomes = {
        name: wait_until(lambda n=name: finished(n), timeout=300, what=f"{name}'s trial")
        for name in ("regex", "template", "fifo", "gguf")
    }
    (regex,) = outcomes["regex"]
    assert regex.state == TrialState.COMPLETE, regex.user_attrs.get("error")
    failures = [
        ("template", "deadline", "chat template"),
        ("fifo", "input", "FIFO"),
        ("gguf", "input", "claims"),
    ]
    for name, reason, says in failures:
        (trial,) = outcomes[name]
        assert trial.state == TrialState.FAIL, name
        assert trial.user_attrs[FAIL_REASON_ATTR] == reason, trial.user_attrs
        assert says in trial.user_attrs["error"], trial.user_attrs
    lean = {"path": "builtin:demo-text", "max_train_examples": 32, "max_eval_examples": 16}
    _registered(rooted, small_study("normal", dataset=lean, budget={"max_trials": 1}))
    (normal,) = wait_until(lambda: finished("normal"), timeout=300, what="the normal trial")
    assert normal.state == TrialState.COMPLETE, normal.user_attrs.get("error")


# --- issue 33: what a spec may allocate --------------------------------------------------------

BATCH = ("body", "search", "space", "per_device_train_batch_size")
SEQ = ("body", "train", "training", "max_seq_length")


def _words(count: int) -> str:
    return " ".join(["ada has two cups ."] * (count // 5))


def _past_limits(api: ApiServer, spec: dict[str, Any]) -> dict[tuple[str, ...], list[Any]]:
    """A registration that must be a 422 of resource limits: each field's errors."""
    with api.client() as client:
        response = client.post("/studies", json=spec)
    assert response.status_code == 422, response.text
    named: dict[tuple[str, ...], list[Any]] = {}
    for error in response.json()["detail"]:
        assert error["type"] == "resource_limit", error
        assert error["ctx"]["estimate"] > error["ctx"]["limit"], error
        assert error["ctx"]["setting"] in error["msg"], error
        named.setdefault(tuple(error["loc"]), []).append(error)
    return named


def test_the_memory_bomb_and_absurd_allocations_are_422_naming_their_fields(
    rooted: ApiServer, tmp_path: Path
) -> None:
    """Batch 512 x 131072 tokens on 512 long rows: a 422 naming the batch and the sequence
    length with the estimate and the limit, on the built-in model (its shape is known), a local
    model folder (config.json read) and a hub id (the caps alone); and the issue's other
    registrations: accumulation 1024, 4096 tokens x 16 beams, 10,000 prompts a report every
    example."""
    data, models = tmp_path / "data", tmp_path / "models"
    rows = _jsonl(data / "long.jsonl", [{"text": _words(2000)}] * 512)
    local = models / "llama"
    shutil.copytree(builtin.resolve("builtin:tiny-llama", rooted.settings.cache_dir), local)
    bomb = {
        "dataset": {"path": rows},
        "space": {"per_device_train_batch_size": {"type": "categorical", "choices": [512]}},
        "training": {"max_seq_length": 131072},
    }
    for model in ("builtin:tiny-llama", str(local), "org/hub-model"):
        named = _past_limits(rooted, minimal_spec("bomb", model={"name_or_path": model}, **bomb))
        assert BATCH in named and SEQ in named, named
        memory = [e for e in named[BATCH] if e["ctx"]["setting"] == "HPO_WORKER_MEMORY_GB"]
        assert len(memory) == (model != "org/hub-model"), named[BATCH]  # shape known or not
        for error in memory:
            assert error["ctx"]["limit"] == rooted.settings.worker_memory_gb, error
            assert error["ctx"]["unit"] == "GB" and error["ctx"]["estimate"] > 100, error
        caps = [e for e in named[BATCH] if e["ctx"]["setting"] == "HPO_MAX_BATCH_TOKENS"]
        assert caps and caps[0]["ctx"]["estimate"] == 512 * 131072, named[BATCH]
    generating = {"metric": "exact_match"}
    absurd = [
        ({"training": {"gradient_accumulation_steps": 1024, "max_seq_length": 4096}},
         ("body", "train", "training", "gradient_accumulation_steps")),
        ({"training": {"max_new_tokens": 4096, "num_beams": 16}, "objective": generating},
         ("body", "train", "training", "num_beams")),
        ({"evaluation": {"every_examples": 1, "generation": {"max_examples": 10000,
                                                             "report_examples": 10000}},
          "objective": generating},
         ("body", "train", "evaluation", "generation", "report_examples")),
    ]  # fmt: skip
    for parts, loc in absurd:
        assert loc in _past_limits(rooted, minimal_spec("absurd", **parts))


def test_a_long_row_in_the_head_is_422(rooted: ApiServer, tmp_path: Path) -> None:
    """A CSV whose 12th row, a JSONL whose 2nd line, is 200 MB (sparse): a 422 naming the row
    (they registered: the head's bound only cut them)."""
    data = tmp_path / "data"
    cases = (
        ("tall.csv", b"text,label\n" + b"ada has two cups .,1\n" * 10 + b'"', "row 12"),
        ("tall.jsonl", b'{"text": "ada has two cups ."}\n{"text": "', "row 2"),
    )
    for name, head, row in cases:
        path = data / name
        path.write_bytes(head)
        os.truncate(path, 200 * 2**20)
        spec = minimal_spec("tall", dataset={"path": str(path), "text_field": "text"})
        error = _refused(rooted, spec)
        assert error["loc"] == ["body", "train", "dataset", "path"], error
        assert row in error["msg"] and "HPO_MAX_ROW_BYTES" in error["msg"], error


def test_a_trial_past_its_memory_or_a_long_line_fails_and_the_worker_goes_on(
    rooted: ApiServer, tmp_path: Path, spawn_worker: Spawn
) -> None:
    """One worker child under HPO_TRIAL_MEMORY_GB=5: a study that registers (batch 4096 x 256
    tokens on the tiny model: ~10 GB by the estimate, under the API's 24) allocates past the
    child's 5 GB and fails as `resources`, its peak RSS under the limit; a JSONL rewritten
    after registration with a 200 MB second line fails as `input`; then a normal study
    completes, all three trials on the same child process."""
    data, settings = tmp_path / "data", rooted.settings
    once = {"budget": {"max_trials": 1, "max_failures_in_a_row": 1}, "pruner": {"type": "none"}}
    rows = _jsonl(data / "rows.jsonl", [{"text": _words(300)}] * 4200)
    _registered(
        rooted,
        small_study(
            "bomb",
            dataset={"path": rows, "max_eval_examples": 4, "validation_fraction": 0.01},
            space={"per_device_train_batch_size": {"type": "categorical", "choices": [4096]}},
            training={"max_seq_length": 256, "max_steps": 1},
            **once,
        ),
    )
    tall = data / "tall.jsonl"
    _registered(
        rooted, small_study("tall", dataset={"path": _jsonl(tall, [{"text": "a b"}])}, **once)
    )
    megabyte = ("ada has two cups . " * 2**16)[: 2**20]
    with tall.open("w") as f:  # a real 200 MB line of words, not a sparse one
        f.write('{"text": "ada has two cups ."}\n{"text": "')
        for _ in range(200):
            f.write(megabyte)
        f.write('"}\n')
    spawn_worker(
        settings,
        "w",
        "--idle-exit",
        "120",
        HPO_TRIAL_MEMORY_GB="5",
        HPO_DATA_ROOTS=json.dumps([str(data)]),
    )

    def finished(name: str) -> Any:
        found = trials(settings, name)
        return found if found and all(t.state.is_finished() for t in found) else None

    ran = wait_until(lambda: finished("bomb"), timeout=300, what="the bomb's trial")
    (bomb,) = [t for t in ran if not is_infeasible_record(t)]  # samplers are told it failed
    assert bomb.state == TrialState.FAIL
    assert bomb.user_attrs[FAIL_REASON_ATTR] == "resources", bomb.user_attrs
    assert bomb.user_attrs["peak_memory_mb"] < 5 * 1024, bomb.user_attrs
    (tall_trial,) = wait_until(lambda: finished("tall"), timeout=300, what="the tall trial")
    assert tall_trial.user_attrs[FAIL_REASON_ATTR] == "input", tall_trial.user_attrs
    assert "row 2 is longer than" in tall_trial.user_attrs["error"], tall_trial.user_attrs
    lean = {"path": "builtin:demo-text", "max_train_examples": 32, "max_eval_examples": 16}
    _registered(rooted, small_study("normal", dataset=lean, budget={"max_trials": 1}))
    (normal,) = wait_until(lambda: finished("normal"), timeout=300, what="the normal trial")
    assert normal.state == TrialState.COMPLETE, normal.user_attrs.get("error")
    assert (
        bomb.user_attrs["worker"] == tall_trial.user_attrs["worker"] == normal.user_attrs["worker"]
    )
