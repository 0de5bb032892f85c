"""Fine-tunes as practitioners run them, on a real pretrained checkpoint (SmolLM2-135M-Instruct)
with real text: each TRL data shape, completion-only labels on real token ids, a GGUF file, a
decoding-parameter study with two workers."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from optuna.trial import TrialState
from transformers import AutoModelForCausalLM, AutoTokenizer

from hpo.checkpoints import packaged_smollm2
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from tests import realmodel
from tests.conftest import ApiServer
from tests.specs import study_spec
from tests.workers import trials
from worker import sft
from worker.data import Splits, load_splits
from worker.loop import Worker
from worker.trainer import trainer_arguments, trial_hparams

pytestmark = pytest.mark.slow
Spawn = Callable[..., subprocess.Popen[bytes]]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def data(tmp_path: Path) -> dict[str, str]:
    """One file per shape; prompts and answers are short real English."""
    folder = tmp_path / "data"
    folder.mkdir()
    qa = realmodel.QA * 4
    chat = [
        {
            "messages": [
                {"role": "user", "content": "Hello!"},
                {"role": "assistant", "content": "Hello, how can I help?"},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]
        }
        for q, a in qa
    ]
    return {
        "language_modeling": _jsonl(
            folder / "text.jsonl", [{"text": t} for t in realmodel.TEXT * 8]
        ),
        "prompt_completion": _jsonl(
            folder / "qa.jsonl", [{"prompt": q, "completion": " " + a} for q, a in qa]
        ),
        "prompt_completion_messages": _jsonl(
            folder / "qa-messages.jsonl",
            [
                {
                    "prompt": [{"role": "user", "content": q}],
                    "completion": [{"role": "assistant", "content": a}],
                }
                for q, a in qa
            ],
        ),
        "conversational": _jsonl(folder / "chat.jsonl", chat),
    }


@pytest.fixture
def api(pg_settings: Settings, smollm2: Path, tmp_path: Path) -> Iterator[ApiServer]:
    settings = pg_settings.model_copy(
        update={"data_roots": [tmp_path], "model_roots": [smollm2.parent, tmp_path]}
    )
    with ApiServer(settings) as server:
        yield server


def _study(name: str, model: str, dataset: dict[str, Any], **parts: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "model": {"name_or_path": model},
        "dataset": {"max_eval_examples": 8, "validation_fraction": 0.25, **dataset},
        "training": {
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "max_seq_length": 96,
            "learning_rate": 5e-4,
        },
        "space": {"lora_r": {"type": "categorical", "choices": [8]}},
        "budget": {"max_trials": 1},
        "evaluation": {"every_examples": 8},
        "report_to": [],
    }
    return study_spec(name, **{**defaults, **parts})


def _run(api: ApiServer, spec: dict[str, Any]) -> list[Any]:
    with api.client() as client:
        created = client.post("/studies", json=spec)
        assert created.status_code == 201, created.text
    Worker(api.settings, idle_exit=0.5, cpu_threads=2).run(handle_signals=False)
    return trials(api.settings, spec["name"])


def test_the_base_model_is_sane_and_tuning_lowers_its_loss(
    api: ApiServer, smollm2: Path, data: dict[str, str]
) -> None:
    spec = _study(
        "real-text",
        str(smollm2),
        {"path": data["language_modeling"]},
        training={
            "max_steps": 12,
            "per_device_train_batch_size": 4,
            "max_seq_length": 64,
            "learning_rate": 1e-3,
        },
    )
    (trial,) = _run(api, spec)
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("error")
    with api.client() as client:
        baseline = client.get("/studies/real-text").json()["baseline"]
    assert 1.0 < baseline["eval_loss"] < 6.0  # nats per token: a real model on real text
    assert trial.value < baseline["eval_loss"]


@pytest.mark.parametrize(
    "shape", ["prompt_completion", "prompt_completion_messages", "conversational"]
)
def test_each_data_shape_trains(
    api: ApiServer, smollm2: Path, data: dict[str, str], shape: str
) -> None:
    name = shape.replace("_", "-")
    (trial,) = _run(api, _study(name, str(smollm2), {"path": data[shape]}))
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("error")
    assert math.isfinite(trial.value) and trial.value > 0
    assert trial.user_attrs["eval_seconds"] > 0 and trial.user_attrs["tokens_seen"] > 0


def _prepared(smollm2: Path, data: str, tmp_path: Path) -> tuple[Splits, Any]:
    spec = StudySpec.model_validate(_study("masks", str(smollm2), {"path": data}, report_to=[]))
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    raw = load_splits(spec.train.dataset, task="causal-lm", cache_dir=tmp_path)
    hparams = trial_hparams(spec, {"lora_r": 8})
    kwargs = trainer_arguments(
        hparams,
        spec,
        out_dir=str(tmp_path),
        device=torch.device("cpu"),
        n_train=len(raw.train),
        wants_logits=False,
    )
    args = sft.config(
        kwargs, loss_on="completion", splits=raw, tokenizer=tokenizer, max_length=96, packing=False
    )
    return sft.prepare(raw, args, model, tokenizer), tokenizer


@pytest.mark.parametrize("shape", ["prompt_completion", "conversational"])
def test_only_completion_tokens_carry_labels_and_the_end_is_learnt(
    smollm2: Path, data: dict[str, str], tmp_path: Path, shape: str
) -> None:
    """On the real tokenizer: prompt tokens are -100, the completion's tokens are labelled
    with themselves, and the end-of-turn token closes every labelled span (so a tuned model
    learns to stop; the pad token is the same token, yet it stays labelled)."""
    prepared, tokenizer = _prepared(smollm2, data[shape], tmp_path)
    answers = {a for _, a in realmodel.QA} | {"Hello, how can I help?"}
    for row in prepared.train:
        ids, labels = row["input_ids"], row["labels"]
        labelled = [i for i, label in enumerate(labels) if label != -100]
        assert labelled and labels[0] == -100  # the prompt is masked
        assert all(labels[i] == ids[i] for i in labelled)
        first = labelled[0]
        assert all(label == -100 for label in labels[:first])
        text = tokenizer.decode([ids[i] for i in labelled])
        assert text.strip().replace("<|im_end|>", "").strip() in answers, text
        assert tokenizer.eos_token_id in [ids[i] for i in labelled]
        assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_a_gguf_file_is_a_model(api: ApiServer, data: dict[str, str], tmp_path: Path) -> None:
    gguf = packaged_smollm2()
    assert gguf is not None
    link = tmp_path / gguf.name
    link.symlink_to(gguf)  # inside the model roots of this API
    settings = api.settings.model_copy(update={"model_roots": [tmp_path, gguf.parent]})
    with ApiServer(settings) as gguf_api:
        spec = _study(
            "from-gguf",
            str(gguf),
            {"path": data["prompt_completion"]},
            training={"max_steps": 1, "per_device_train_batch_size": 2, "max_seq_length": 48},
        )
        (trial,) = _run(gguf_api, spec)
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("error")


def test_a_decoding_study_with_two_workers(
    api: ApiServer, smollm2: Path, data: dict[str, str], spawn_worker: Spawn
) -> None:
    """A fine-tune first, then a decode study on its best adapter: trials train nothing,
    generate with the searched settings and score the answers."""
    tuned = _study("capitals", str(smollm2), {"path": data["prompt_completion"]})
    (trial,) = _run(api, tuned)
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("error")
    decode = study_spec(
        "capitals-decode",
        mode="decode",
        model={"name_or_path": str(smollm2)},
        dataset={
            "path": data["prompt_completion"],
            "max_eval_examples": 8,
            "validation_fraction": 0.25,
        },
        adapter={"study": "capitals"},
        training={"max_new_tokens": 8},
        evaluation={"generation": {"max_examples": 4}},
        space={
            "temperature": {"type": "float", "low": 0.1, "high": 1.0},
            "top_p": {"type": "float", "low": 0.5, "high": 1.0},
        },
        objective={"metric": "contains"},
        sampler={"type": "random", "seed": 0},
        budget={"max_trials": 4},
    )
    with api.client() as client:
        created = client.post("/studies", json=decode)
        assert created.status_code == 201, created.text
    settings = api.settings
    roots = {
        "HPO_DATA_ROOTS": json.dumps([str(p) for p in settings.data_roots]),
        "HPO_MODEL_ROOTS": json.dumps([str(p) for p in settings.model_roots]),
    }
    workers = [spawn_worker(api.settings, f"d{i}", "--idle-exit", "5", **roots) for i in range(2)]
    assert [w.wait(timeout=600) for w in workers] == [0, 0]
    done = trials(api.settings, "capitals-decode")
    assert [t.state for t in done] == [TrialState.COMPLETE] * 4
    assert all(0.0 <= t.value <= 1.0 for t in done)
    assert all("sample_answer" in t.user_attrs for t in done)
