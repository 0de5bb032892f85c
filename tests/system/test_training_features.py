"""What practitioners expect around a trial, on the built-in tiny models: validation and test
files, chat data needing a template, max_steps, a step-0 baseline, TensorBoard logs, the best
configuration as plain library arguments, named classification labels, a hub id offline."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState
from peft import LoraConfig
from transformers import TrainingArguments

from hpo.core.records import EVAL_LOSS_CURVE_ATTR
from hpo.core.settings import Settings
from tests.conftest import ApiServer
from tests.specs import minimal_spec
from tests.workers import small_study, trials
from worker import builtin
from worker.loop import Worker

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _demo_rows(cache: Path, start: int, n: int) -> list[dict[str, Any]]:
    lines = (builtin.resolve("builtin:demo-text", cache)).read_text().splitlines()
    return [json.loads(line) for line in lines[start : start + n]]


@pytest.fixture
def rooted(pg_settings: Settings, tmp_path: Path) -> Any:
    settings = pg_settings.model_copy(update={"data_roots": [tmp_path, ROOT]})
    with ApiServer(settings) as api:
        yield api


def _run(api: ApiServer, spec: dict[str, Any], **worker: Any) -> list[Any]:
    with api.client() as client:
        created = client.post("/studies", json=spec)
        assert created.status_code == 201, created.text
    Worker(api.settings, idle_exit=0.5, cpu_threads=1, **worker).run(handle_signals=False)
    return trials(api.settings, spec["name"])


def test_validation_and_test_files_max_steps_baseline_and_logs(
    rooted: ApiServer, tmp_path: Path
) -> None:
    cache = rooted.settings.cache_dir
    train = _jsonl(tmp_path / "train.jsonl", _demo_rows(cache, 0, 200))
    valid = _jsonl(tmp_path / "valid.jsonl", _demo_rows(cache, 200, 24))
    test = _jsonl(tmp_path / "test.jsonl", _demo_rows(cache, 300, 16))
    spec = small_study(
        "files",
        dataset={"path": train, "validation_path": valid, "test_path": test},
        training={"max_steps": 5, "max_seq_length": 32},
        space={"lora_r": {"type": "categorical", "choices": [4]}},
        pruner={"type": "none"},
        budget={"max_trials": 1},
        evaluation={"every_examples": 16, "batch_size": 8},
    )
    (trial,) = _run(rooted, spec)
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("error")
    attrs = trial.user_attrs
    assert attrs["examples_seen"] == 5 * 8  # max_steps x the batch of small_study's choices
    assert attrs["test_loss"] > 0 and attrs["eval_seconds"] > 0
    with rooted.client() as client:
        study = client.get("/studies/files").json()
        assert study["baseline"]["eval_loss"] > 0
        logs = client.get("/studies/files/trials/0/tensorboard")
        assert logs.status_code == 200, logs.text
        events = zipfile.ZipFile(io.BytesIO(logs.content)).namelist()
        assert any("events.out.tfevents" in n for n in events)
        config = client.get("/studies/files/best/config").json()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), **config["training_arguments"])
    assert args.max_steps == 5
    lora = LoraConfig(**config["lora_config"])
    assert lora.r == 4 and set(lora.target_modules) >= {"q_proj", "v_proj"}
    assert config["sft_config"]["max_length"] == 32


def test_chat_data_needs_a_chat_template(rooted: ApiServer, tmp_path: Path) -> None:
    """The built-in Llama's tokenizer has no chat template: registering chat data for it is a
    422; where registration cannot tell, the trial fails saying so."""
    chat = _jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "ada has two cups"},
                    {"role": "assistant", "content": "so ada has two cups ."},
                ]
            }
        ]
        * 20,
    )
    budget = {"max_trials": 1, "max_failures_in_a_row": 1}
    spec = minimal_spec("chat", dataset={"path": chat}, budget=budget)
    with rooted.client() as client:
        refused = client.post("/studies", json=spec)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "train", "model", "name_or_path"]
    assert "chat template" in refused.json()["detail"][0]["msg"]
    blind = rooted.settings.model_copy(update={"verify_inputs": False})
    with ApiServer(blind) as api:
        (trial,) = _run(api, spec)
        assert api.client().get("/studies/chat").json()["status"] == "failed"
    assert trial.state == TrialState.FAIL
    assert "no chat template" in trial.user_attrs["error"]


def test_classification_adapters_carry_their_label_names(pg_api: ApiServer) -> None:
    spec = small_study(
        "labels",
        model={"name_or_path": "builtin:tiny-encoder", "task": "sequence-classification"},
        dataset={
            "path": "examples/data/reviews.csv",
            "text_field": "review",
            "label_field": "sentiment",
        },
        objective={"metric": "eval_accuracy"},
        space={"lora_r": {"type": "categorical", "choices": [4]}},
        budget={"max_trials": 1},
    )
    settings = pg_api.settings.model_copy(update={"data_roots": [ROOT]})
    with ApiServer(settings) as api, api.client() as client:
        cwd = Path.cwd()
        os.chdir(ROOT)  # the example's data path is relative to the repository
        try:
            (trial,) = _run(api, spec)
        finally:
            os.chdir(cwd)
        assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("error")
        adapter = zipfile.ZipFile(io.BytesIO(client.get("/studies/labels/best/adapter").content))
    config = json.loads(adapter.read("config.json"))
    assert set(config["id2label"].values()) == {"negative", "positive"}


def test_a_hub_id_resolves_from_the_local_cache_offline(tmp_path: Path) -> None:
    """A model named by hub id loads from the workers' Hugging Face cache with no network
    (HF_HUB_OFFLINE is read when huggingface_hub is imported: a process of its own)."""
    hub = tmp_path / "hub" / "models--acme--tiny-llama"
    builtin.build_llama(hub / "snapshots" / ("a" * 40))
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("a" * 40)
    load = (
        "import torch; from hpo.core.spec import ModelSpec; from worker.models import ModelCache; "
        "cache = ModelCache(device=torch.device('cpu'), cache_dir=None); "
        "loaded = cache.get(ModelSpec(name_or_path='acme/tiny-llama')); "
        "print(loaded.model.config.model_type)"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", load],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("llama")


def test_packing_fills_every_sequence(pg_api: ApiServer) -> None:
    """With packing, batches are full sequences of max_seq_length tokens (no padding): many
    more tokens per step than the short demo sentences give unpacked."""
    steps, batch, length = 3, 8, 64
    spec = small_study(
        "packed",
        training={"max_steps": steps, "max_seq_length": length, "packing": True},
        space={"per_device_train_batch_size": {"type": "categorical", "choices": [batch]}},
        pruner={"type": "none"},
        budget={"max_trials": 1},
    )
    (trial,) = _run(pg_api, spec)
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("error")
    assert trial.user_attrs["tokens_seen"] > 0.8 * steps * batch * length


def test_a_generation_objective_reports_a_subset_score_and_the_loss_curve(
    rooted: ApiServer, tmp_path: Path
) -> None:
    rows = [
        {"prompt": f"{a} plus {b} is", "completion": f" {a + b}"}
        for a in range(8)
        for b in range(6)
    ]
    every, batch, steps = 8, 4, 6
    spec = small_study(
        "generating",
        dataset={"path": _jsonl(tmp_path / "sums.jsonl", rows), "max_eval_examples": 8},
        training={"max_steps": steps, "max_seq_length": 32, "max_new_tokens": 4},
        space={"per_device_train_batch_size": {"type": "categorical", "choices": [batch]}},
        objective={"metric": "exact_match"},
        pruner={"type": "none"},
        budget={"max_trials": 1},
        evaluation={
            "every_examples": every,
            "generation": {"max_examples": 8, "report_examples": 2},
        },
    )
    (trial,) = _run(rooted, spec)
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("error")
    points = list(range(every, steps * batch + 1, every))
    assert sorted(trial.intermediate_values) == points
    # a subset of 2 prompts scores in halves; the final value is on all 8 prompts
    assert all(v in (0.0, 0.5, 1.0) for v in trial.intermediate_values.values())
    assert 0.0 <= trial.value <= 1.0
    curve = trial.user_attrs[EVAL_LOSS_CURVE_ATTR]
    assert sorted(int(k) for k in curve) == points and all(v > 0 for v in curve.values())
    assert trial.user_attrs["eval_seconds"] > 0
