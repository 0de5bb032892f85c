"""A study's best configuration as plain transformers / PEFT / TRL arguments, for code that
trains without this service: ``TrainingArguments(**training_arguments)``,
``LoraConfig(**lora_config)`` (``AdaLoraConfig`` when ``peft_config_class`` says so),
``SFTConfig(**training_arguments, **sft_config)``, ``GenerationConfig(**generation_config)``."""

from __future__ import annotations

import math
from typing import Any

from optuna.trial import FrozenTrial

from hpo.core.hyperparameters import arguments, peft_config, resolve, scheduler_kwargs
from hpo.core.spec import StudySpec

# Recorded by the worker: LoRA targets resolved on the model ("attention" -> module names).
RESOLVED_TARGETS_ATTR = "lora_target_modules_resolved"
# Recorded by the worker for an AdaLoRA trial: the rank each module ended at.
RANK_PATTERN_ATTR = "adalora_rank_pattern"


def best_configuration(spec: StudySpec, trial: FrozenTrial) -> dict[str, Any]:
    settings = resolve(spec.train.training.values(), trial.params)
    training = arguments(settings, "trainer")
    per_step = settings["per_device_train_batch_size"] * settings["gradient_accumulation_steps"]
    steps = math.ceil(trial.user_attrs.get("examples_seen", per_step) / per_step)
    config_class, lora = peft_config(settings, steps)
    lora["target_modules"] = trial.user_attrs.get(RESOLVED_TARGETS_ATTR, lora["target_modules"])
    if kwargs := scheduler_kwargs(settings, steps):
        training["lr_scheduler_kwargs"] = kwargs
    return {
        "study": spec.name,
        "trial": trial.number,
        "value": trial.value,
        "model": spec.train.model.name_or_path,
        "training_arguments": training,
        "sft_config": arguments(settings, "sft")
        | {
            "max_length": settings["max_seq_length"],
            "completion_only_loss": spec.train.loss_on == "completion",
        },  # fmt: skip
        "peft_config_class": config_class,
        "lora_config": lora,
        "generation_config": arguments(settings, "generation"),
    }
