"""A study's best configuration as plain transformers / PEFT / TRL arguments, for code that
trains without this service: ``TrainingArguments(**training_arguments)``,
``LoraConfig(**lora_config)`` (``AdaLoraConfig`` when ``peft_config_class`` says so),
``SFTConfig(**training_arguments, **sft_config)``, ``GenerationConfig(**generation_config)``."""

from __future__ import annotations

import math
from typing import Any

from optuna.trial import FrozenTrial

from hpo.core import records
from hpo.core.hyperparameters import arguments, peft_config, resolve, scheduler_kwargs
from hpo.core.spec import StudySpec


def best_configuration(spec: StudySpec, trial: FrozenTrial) -> dict[str, Any]:
    settings = resolve(spec.train.training.values(), trial.params)
    training = arguments(settings, "trainer")
    per_step = settings["per_device_train_batch_size"] * settings["gradient_accumulation_steps"]
    seen = records.examples_seen(trial)
    steps = math.ceil((per_step if seen is None else seen) / per_step)
    config_class, lora = peft_config(settings, steps)
    resolved = records.resolved_targets(trial)
    if resolved is not None:
        lora["target_modules"] = resolved
    if kwargs := scheduler_kwargs(settings, steps):
        training["lr_scheduler_kwargs"] = kwargs
    training |= device_fields(trial)
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
        },
        "peft_config_class": config_class,
        "lora_config": lora,
        "generation_config": arguments(settings, "generation"),
        "trained_on": records.device(trial),
    }


def device_fields(trial: FrozenTrial) -> dict[str, bool]:
    """bf16, fp16 and use_cpu as the trial ran: left out, transformers and TRL pick their own
    (TRL's SFTConfig turns bf16 on, which a CPU refuses). A trial from before they were
    recorded: a CPU's, from its device; a GPU's are its spec's, as they were."""
    used = records.precision(trial)
    if used is not None:
        return used
    device = records.device(trial)
    if device == "cpu":
        return {"bf16": False, "fp16": False, "use_cpu": True}
    return {}
