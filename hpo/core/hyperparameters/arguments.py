"""A trial's settings: resolved from the declarations' defaults, the study's fixed values and
the trial's sampled ones, and given to each library under its own names."""

from __future__ import annotations

import math
from typing import Any

from hpo.core.hyperparameters.declared import BY_NAME, HYPERPARAMETERS
from hpo.core.hyperparameters.setting import Target


def resolve(fixed: dict[str, Any], searched: dict[str, Any]) -> dict[str, Any]:
    """A trial's value of every setting: defaults < the study's fixed ``training`` < the
    trial's sampled params; cast to each setting's type."""
    merged = {hp.name: hp.default for hp in HYPERPARAMETERS} | fixed | searched
    settings = {name: BY_NAME[name].cast(value) for name, value in merged.items()}
    if settings["lora_alpha"] is None:  # the usual rule: scale alpha / r = 2
        settings["lora_alpha"] = 2.0 * settings["lora_r"]
    if settings["adalora_init_r"] is None:
        settings["adalora_init_r"] = math.ceil(1.5 * settings["lora_r"])
    return settings


def adalora_phases(settings: dict[str, Any], steps: int) -> tuple[int, int]:
    """AdaLoRA's (tinit, tfinal) in optimiser steps of a run of ``steps``: their shares sum to
    less than 1, so tinit < steps - tfinal, as PEFT requires."""
    return math.floor(settings["adalora_tinit"] * steps), math.floor(
        settings["adalora_tfinal"] * steps
    )


def peft_config(settings: dict[str, Any], steps: int) -> tuple[str, dict[str, Any]]:
    """The PEFT config class (``LoraConfig`` or ``AdaLoraConfig``) of a trial's adapter and its
    keyword arguments, for a run of ``steps`` optimiser steps (AdaLoRA's ``total_step``)."""
    lora = arguments(settings, "lora")
    method = settings["lora_method"]
    if method == "adalora":
        tinit, tfinal = adalora_phases(settings, steps)
        del lora["r"]  # AdaLoraConfig ignores r: it starts at init_r, ends at target_r on average
        return "AdaLoraConfig", lora | {
            "init_r": max(settings["adalora_init_r"], settings["lora_r"]),
            "target_r": settings["lora_r"],
            "tinit": tinit,
            "tfinal": tfinal,
            "deltaT": settings["adalora_delta_t"],
            "orth_reg_weight": settings["adalora_orth_reg_weight"],
            "total_step": steps,
        }
    init = settings["init_lora_weights"]
    return "LoraConfig", lora | {
        "use_dora": method == "dora",
        "use_rslora": method == "rslora",
        "init_lora_weights": True if init == "default" else init,
    }


def scheduler_kwargs(settings: dict[str, Any], steps: int) -> dict[str, Any]:
    """``lr_scheduler_kwargs`` for the schedulers that need them, given the run's steps: WSD
    decays over the last 20%, cosine-with-min-lr floors at 10% of the peak."""
    name = settings["lr_scheduler_type"]
    if name == "warmup_stable_decay":
        return {"num_decay_steps": max(1, steps // 5)}
    if name == "cosine_with_min_lr":
        return {"min_lr_rate": 0.1}
    return {}


def arguments(settings: dict[str, Any], target: Target) -> dict[str, Any]:
    """The keyword arguments ``settings`` give one library, under its own names; unset
    (None) settings are left to the library's default."""
    return {
        hp.key: settings[hp.name]
        for hp in HYPERPARAMETERS
        if hp.target == target and settings.get(hp.name) is not None
    }
