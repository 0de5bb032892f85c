"""The export runs where it is loaded: bf16, fp16 and use_cpu are written as the trial ran
them, so ``TrainingArguments`` / ``SFTConfig`` / ``LoraConfig`` take it on the CPU it came
from (left out, TRL's SFTConfig turned bf16 on and a CPU refused it)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from peft import LoraConfig
from transformers import TrainingArguments
from trl import SFTConfig

from hpo.core.export import best_configuration
from hpo.core.records import DEVICE_ATTR, record_precision
from hpo.core.schemas import BestConfigPublic
from hpo.core.spec import StudySpec
from tests.specs import minimal_spec

SPEC = StudySpec.model_validate(
    minimal_spec(
        "cpu-study",
        space={"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}},
    )
)


def _trial(**attrs: object) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        params={"learning_rate": 3e-4},
        distributions={"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2)},
        value=0.5,
        user_attrs={"examples_seen": 64, "lora_target_modules_resolved": ["q_proj"], **attrs},
    )


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "from-the-device"])
def test_a_cpu_trials_export_loads_on_a_cpu(tmp_path: Path, recorded: bool) -> None:
    trial = _trial(**{DEVICE_ATTR: "cpu"})
    if recorded:  # what a worker writes as its Trainer starts
        record_precision(trial, bf16=False, fp16=False, use_cpu=True)
    exported = BestConfigPublic.model_validate(best_configuration(SPEC, trial))
    training = exported.training_arguments
    assert (training["bf16"], training["fp16"], training["use_cpu"]) == (False, False, True)
    assert exported.trained_on == "cpu"
    out = str(tmp_path)
    args = TrainingArguments(output_dir=out, **training)
    assert (args.bf16, args.fp16, args.use_cpu) == (False, False, True)
    sft = SFTConfig(output_dir=out, **training, **exported.sft_config)
    assert (sft.bf16, sft.use_cpu) == (False, True)
    assert LoraConfig(**exported.lora_config).target_modules == {"q_proj"}


def test_a_gpu_trials_export_says_how_it_ran() -> None:
    trial = _trial(**{DEVICE_ATTR: "cuda:0"})
    record_precision(trial, bf16=True, fp16=False, use_cpu=False)
    exported = best_configuration(SPEC, trial)
    assert exported["trained_on"] == "cuda:0"
    training = exported["training_arguments"]
    assert (training["bf16"], training["fp16"], training["use_cpu"]) == (True, False, False)
