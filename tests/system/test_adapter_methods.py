"""Adapter methods on real workers: LoRA, DoRA, rsLoRA and AdaLoRA trained on the tiny model;
an AdaLoRA trial paused and continued ends as the same trial trained without a pause; a
decode study generates with a stored AdaLoRA adapter."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState
from peft import AdaLoraConfig, PeftModel
from transformers import AutoModelForCausalLM

from hpo.core.records import CONTINUES_ATTR, RANK_PATTERN_ATTR, RESUMED_VALUE_ATTR
from hpo.core.settings import Settings
from tests.conftest import ApiServer
from tests.specs import study_spec
from tests.workers import small_study, trials
from worker.builtin import resolve
from worker.loop import Worker

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["lora", "dora", "rslora", "adalora"]
# A rank budget of 4 per module on average, allocated from 6 after 3 of the 32 steps.
ADALORA = {
    "lora_method": "adalora",
    "lora_r": 4,
    "adalora_init_r": 6,
    "adalora_tinit": 0.1,
    "adalora_tfinal": 0.2,
}


def _run_worker(settings: Settings) -> None:
    Worker(settings, idle_exit=0.5, cpu_threads=1).run(handle_signals=False)


def _ranks(trial: Any) -> dict[str, int]:
    return dict(trial.user_attrs[RANK_PATTERN_ATTR])


@pytest.mark.slow
def test_each_method_trains_and_adalora_keeps_its_rank_budget(pg_api: ApiServer) -> None:
    """One study searches the method: every method trains to a finite loss, the AdaLoRA trial
    records a rank pattern within its budget, and its configuration exports as an
    AdaLoraConfig."""
    spec = small_study(
        "methods",
        space={"lora_method": {"type": "categorical", "choices": METHODS}},
        training={
            "num_train_epochs": 1,
            "max_seq_length": 32,
            "learning_rate": 3e-3,
            "per_device_train_batch_size": 8,
            "lora_r": 4,
            "adalora_init_r": 6,
        },
        sampler={"type": "grid"},
        pruner={"type": "none"},
        budget={"max_trials": len(METHODS)},
    )
    with pg_api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        _run_worker(pg_api.settings)
        done = {t.params["lora_method"]: t for t in trials(pg_api.settings, "methods")}
        assert sorted(done) == sorted(METHODS)
        untuned = client.get("/studies/methods").json()["baseline"]["eval_loss"]
        for method, trial in done.items():
            assert trial.state == TrialState.COMPLETE, (method, trial.user_attrs.get("error"))
            assert 0 < trial.value < untuned, method
        ranks = _ranks(done["adalora"])
        assert all(RANK_PATTERN_ATTR not in done[m].user_attrs for m in METHODS[:3])
        # 4 per module on average, from 6: the budget moved ranks between modules or cut them
        targets = done["adalora"].user_attrs["lora_target_modules_resolved"]
        assert {name.rsplit(".", 1)[1] for name in ranks} == set(targets)
        assert sum(ranks.values()) <= 4 * len(ranks) < 6 * len(ranks)
        best = client.get("/studies/methods/best/config").json()
    if best["peft_config_class"] == "AdaLoraConfig":
        config = AdaLoraConfig(**best["lora_config"])
        assert (config.init_r, config.target_r) == (6, 4)
    else:
        assert best["lora_config"]["use_dora"] == (done["dora"].number == best["trial"])


@pytest.mark.slow
def test_a_paused_adalora_trial_continues_where_it_stopped(pg_api: ApiServer) -> None:
    """Two AdaLoRA configurations pause at 64 examples, in the middle of the rank allocation;
    the better one continues from its saved state (adapter, optimizer and allocator) and ends
    with the curve and the rank pattern of the same configuration trained without a pause."""
    config = {"learning_rate": 3e-3, "per_device_train_batch_size": 8}
    top_1_of_2 = {"type": "top_k", "at_steps": 64, "k": 1, "min_scored": 2}
    space = {
        "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "per_device_train_batch_size": {"type": "categorical", "choices": [8]},
    }
    training = {"num_train_epochs": 1, "max_seq_length": 32, **ADALORA}
    paused = small_study(
        "adalora-paused",
        space=space,
        training=training,
        pruner={"type": "none"},
        scheduler=top_1_of_2,
        budget={"max_trials": 2},
    )
    plain = small_study(
        "adalora-plain",
        space=space,
        training=training,
        pruner={"type": "none"},
        budget={"max_trials": 1},
    )
    with pg_api.client() as client:
        assert client.post("/studies", json=paused).status_code == 201
        for params in (config, {**config, "learning_rate": 6e-3}):
            queued = client.post("/studies/adalora-paused/trials", json={"params": params})
            assert queued.status_code == 201
        _run_worker(pg_api.settings)
        first, second, last = trials(pg_api.settings, "adalora-paused")
        parent = (first, second)[last.user_attrs[CONTINUES_ATTR]]
        assert client.post("/studies", json=plain).status_code == 201
        queued = client.post("/studies/adalora-plain/trials", json={"params": parent.params})
        assert queued.status_code == 201
        _run_worker(pg_api.settings)
    (uninterrupted,) = trials(pg_api.settings, "adalora-plain")
    assert last.state == uninterrupted.state == TrialState.COMPLETE
    assert last.user_attrs[RESUMED_VALUE_ATTR] == pytest.approx(
        parent.intermediate_values[64], rel=1e-6
    )
    assert sorted(last.intermediate_values) == [64, 128, 192, 256]
    assert last.intermediate_values == pytest.approx(uninterrupted.intermediate_values, rel=1e-5)
    assert _ranks(parent) != _ranks(last)  # the pause came before the allocation ended
    assert _ranks(last) == _ranks(uninterrupted)


@pytest.mark.slow
def test_a_decode_study_generates_with_a_stored_adalora_adapter(
    pg_settings: Settings, tmp_path: Path
) -> None:
    """The best AdaLoRA adapter is stored cut to its final ranks, loads with
    ``PeftModel.from_pretrained``, and a decode study generates with it."""
    settings = pg_settings.model_copy(update={"data_roots": [ROOT]})
    data = {
        "path": "examples/data/short_answers.jsonl",
        "max_train_examples": 64,
        "max_eval_examples": 8,
    }
    tuned = study_spec(
        "answers",
        model={"name_or_path": "builtin:tiny-llama"},
        dataset=data,
        training={"max_seq_length": 32, "learning_rate": 3e-3, **ADALORA},
        space={"per_device_train_batch_size": {"type": "categorical", "choices": [4]}},
        budget={"max_trials": 1},
    )
    decode = study_spec(
        "answers-decode",
        mode="decode",
        model={"name_or_path": "builtin:tiny-llama"},
        dataset=data,
        adapter={"study": "answers"},
        training={"max_new_tokens": 4, "max_seq_length": 32},
        evaluation={"generation": {"max_examples": 4}},
        space={"temperature": {"type": "float", "low": 0.5, "high": 1.0}},
        objective={"metric": "contains"},
        sampler={"type": "random", "seed": 0},
        budget={"max_trials": 2},
    )
    cwd = Path.cwd()
    os.chdir(ROOT)  # the example's data path is relative to the repository
    try:
        with ApiServer(settings) as api, api.client() as client:
            assert client.post("/studies", json=tuned).status_code == 201
            _run_worker(settings)
            stored = client.get("/studies/answers/best/adapter")
            assert stored.status_code == 200, stored.text
            created = client.post("/studies", json=decode)
            assert created.status_code == 201, created.text
            _run_worker(settings)
    finally:
        os.chdir(cwd)
    (trial,) = trials(settings, "answers")
    assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("error")
    folder = tmp_path / "adapter"
    zipfile.ZipFile(io.BytesIO(stored.content)).extractall(folder)
    pattern = json.loads((folder / "adapter_config.json").read_text())["rank_pattern"]
    assert {k.split(".lora_E")[0]: sum(v) for k, v in pattern.items()} == _ranks(trial)
    base = AutoModelForCausalLM.from_pretrained(resolve("builtin:tiny-llama", settings.cache_dir))
    loaded = PeftModel.from_pretrained(base, folder)
    shapes = {
        n.split(".lora_E")[0].removeprefix("base_model.model."): p.shape[0]
        for n, p in loaded.named_parameters()
        if ".lora_E." in n
    }
    assert shapes == _ranks(trial)
    done = trials(settings, "answers-decode")
    assert [t.state for t in done] == [TrialState.COMPLETE] * 2
    assert all(0.0 <= t.value <= 1.0 for t in done)
