"""One declaration per hyperparameter: the spec's validation and schema and the worker's
arguments all come from ``HYPERPARAMETERS``, and every declared target name exists in the
library that receives it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from peft import LoraConfig
from pydantic import ValidationError
from transformers import GenerationConfig, TrainingArguments
from trl import SFTConfig

from hpo.core.hyperparameters import HYPERPARAMETERS, Hyperparameter, arguments, resolve
from hpo.core.spec import SearchSpace, StudySpec, TrainingSettings
from tests.specs import minimal_spec
from worker.trainer import trainer_arguments, trial_hparams

DATACLASSES = {"trainer": TrainingArguments, "sft": SFTConfig, "lora": LoraConfig}
NUMERIC = [hp for hp in HYPERPARAMETERS if hp.kind in (int, float)]


def _inside(hp: Hyperparameter) -> Any:
    """A value the declaration accepts."""
    if hp.kind is bool:
        return True
    if hp.kind is str:
        return hp.choices[-1]
    assert hp.low is not None and hp.high is not None
    value = (hp.low + hp.high) / 2 if hp.high - hp.low < 4 else hp.low + 1
    return hp.kind(value)


@pytest.mark.parametrize("hp", HYPERPARAMETERS, ids=lambda hp: hp.name)
def test_every_setting_names_a_real_argument(hp: Hyperparameter) -> None:
    if hp.target in DATACLASSES:
        fields = {f.name for f in dataclasses.fields(DATACLASSES[hp.target])}
        assert hp.key in fields, f"{hp.name} -> {hp.key} is not in {DATACLASSES[hp.target]}"
    elif hp.target == "generation":
        assert hasattr(GenerationConfig(), hp.key), f"{hp.name} is not a GenerationConfig field"


@pytest.mark.parametrize("hp", HYPERPARAMETERS, ids=lambda hp: hp.name)
def test_the_schema_is_derived_from_the_declaration(hp: Hyperparameter) -> None:
    fixed = TrainingSettings.model_fields[hp.name]
    assert fixed.description is not None and fixed.description.startswith(hp.help)
    assert (hp.name in SearchSpace.model_fields) == hp.searchable
    TrainingSettings.model_validate({hp.name: _inside(hp)})


@pytest.mark.parametrize("hp", NUMERIC, ids=lambda hp: hp.name)
def test_bounds_are_enforced_where_declared(hp: Hyperparameter) -> None:
    for outside in (hp.low - 1 if hp.low is not None else None, (hp.high or 0) * 2 + 1):
        if outside is None or hp.check(outside) is None:
            continue
        with pytest.raises(ValidationError) as error:
            TrainingSettings.model_validate({hp.name: hp.kind(outside)})
        assert error.value.errors()[0]["loc"] == (hp.name,)
    if hp.searchable and hp.high is not None:
        too_high = {"type": "float", "low": float(_inside(hp)), "high": hp.high * 2 + 1}
        if hp.kind is int:
            too_high = {"type": "int", "low": int(_inside(hp)), "high": int(hp.high) * 2 + 1}
        with pytest.raises(ValidationError, match=hp.name):
            SearchSpace.model_validate({hp.name: too_high})


def test_unknown_names_say_which_are_known() -> None:
    with pytest.raises(ValidationError, match="unknown training setting 'momentum'; known"):
        TrainingSettings.model_validate({"momentum": 0.9})
    with pytest.raises(ValidationError, match="unknown hyperparameter 'seed'; known"):
        SearchSpace.model_validate({"seed": {"type": "int", "low": 0, "high": 3}})


def test_fixed_values_are_typed_strictly() -> None:
    with pytest.raises(ValidationError):
        TrainingSettings.model_validate({"lora_r": "8"})
    with pytest.raises(ValidationError):
        TrainingSettings.model_validate({"bf16": 1})
    assert TrainingSettings.model_validate({"num_train_epochs": 2}).values() == {
        "num_train_epochs": 2.0
    }


def test_a_trial_resolves_defaults_then_fixed_then_searched() -> None:
    settings = resolve({"lora_r": 16, "weight_decay": 0.01}, {"lora_r": 32.0})
    assert settings["lora_r"] == 32 and isinstance(settings["lora_r"], int)
    assert settings["weight_decay"] == 0.01
    assert settings["learning_rate"] == 2e-4  # the declared default
    assert settings["optim"] is None  # left to the library
    lora = arguments(settings, "lora")
    assert lora["r"] == 32 and lora["target_modules"] == "attention"
    assert "optim" not in arguments(settings, "trainer")


def test_the_worker_passes_every_trainer_setting(tmp_path: Any) -> None:
    """A study fixing every TrainingArguments setting gets each into the Trainer's arguments."""
    fixed = {hp.name: _inside(hp) for hp in HYPERPARAMETERS if hp.target == "trainer"}
    fixed |= {"bf16": False, "fp16": False, "gradient_checkpointing": False}
    spec = StudySpec.model_validate(
        minimal_spec(
            "all", training=fixed, space={"lora_r": {"type": "categorical", "choices": [4, 8]}}
        )
    )
    hparams = trial_hparams(spec, {"lora_r": 4})
    kwargs = trainer_arguments(
        hparams,
        spec,
        out_dir=str(tmp_path),
        device=torch.device("cpu"),
        n_train=64,
        wants_logits=False,
    )
    args = TrainingArguments(**kwargs)
    for hp in HYPERPARAMETERS:
        if hp.target == "trainer":
            assert getattr(args, hp.key) == fixed[hp.name], hp.name
    assert hparams["lora_alpha"] == 8.0  # the 2 x rank rule when alpha is not set
