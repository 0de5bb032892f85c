"""Every setting a trial can search or fix, declared once: type, bounds, default, meaning, and
where it goes (HF ``TrainingArguments``, PEFT ``LoraConfig``, or the data pipeline).

The study spec (validation, the OpenAPI schema) and the worker (the arguments it builds) are
both derived from ``HYPERPARAMETERS``; adding a setting is one entry in ``declared``. Like a
PEFT config field, each entry carries its help text. ``setting`` defines an entry,
``arguments`` turns a trial's values into each library's arguments. Import from here.
"""

from __future__ import annotations

from hpo.core.hyperparameters.arguments import (
    adalora_phases,
    arguments,
    peft_config,
    resolve,
    scheduler_kwargs,
)
from hpo.core.hyperparameters.declared import (
    BY_NAME,
    HYPERPARAMETERS,
    LORA_INITS,
    LORA_METHODS,
    LORA_TARGETS,
    LR_SCHEDULERS,
    OPTIMIZERS,
    SEARCHABLE,
)
from hpo.core.hyperparameters.setting import Hyperparameter, Kind, Target

__all__ = [
    "BY_NAME",
    "HYPERPARAMETERS",
    "LORA_INITS",
    "LORA_METHODS",
    "LORA_TARGETS",
    "LR_SCHEDULERS",
    "OPTIMIZERS",
    "SEARCHABLE",
    "Hyperparameter",
    "Kind",
    "Target",
    "adalora_phases",
    "arguments",
    "peft_config",
    "resolve",
    "scheduler_kwargs",
]
