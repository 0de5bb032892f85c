"""Every setting a trial can search or fix, declared once: type, bounds, default, meaning, and
where it goes (HF ``TrainingArguments``, PEFT ``LoraConfig``, or the data pipeline).

The study spec (validation, the OpenAPI schema) and the worker (the arguments it builds) are
both derived from ``HYPERPARAMETERS``; adding a setting is one entry here. Like a PEFT config
field, each entry carries its help text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

# trainer: transformers' TrainingArguments; sft: TRL's SFTConfig (causal LMs) on top of it;
# lora: PEFT's LoraConfig; adapter: which PEFT config and its budget (``peft_config``);
# data: the worker's tokenization; generation: GenerationConfig.
Target = Literal["trainer", "sft", "lora", "adapter", "data", "generation"]
Kind = type[float] | type[int] | type[str] | type[bool]

LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "cosine_with_min_lr",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "warmup_stable_decay",
)
LORA_TARGETS = ("attention", "mlp", "all-linear")
# lora: plain LoRA; dora: weight-decomposed (use_dora); rslora: scale alpha/sqrt(r)
# (use_rslora); adalora: AdaLoRA, which moves a rank budget to the modules that matter.
LORA_METHODS = ("lora", "dora", "rslora", "adalora")
# PEFT's init_lora_weights; "default" is its True. PiSSA and OLoRA are left out: they rewrite
# the base weights, which a worker shares between trials, and their adapters need a conversion
# before they load on the original base model.
LORA_INITS = ("default", "gaussian", "orthogonal")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd")


@dataclass(frozen=True)
class Hyperparameter:
    """One setting of a trial.

    Args:
        name: The name in specs (``search.space``, ``train.training``).
        kind: Its Python type.
        default: The value a trial uses when the study neither searches nor fixes it; None
            leaves the library's own default (or a rule in the worker, e.g. LoRA alpha = 2r).
        help: What it means, shown in the OpenAPI schema.
        target: Where the worker applies it.
        argument: Its name in ``TrainingArguments`` / ``LoraConfig`` when that differs.
        low, high, low_inclusive: Numeric bounds.
        choices: The accepted strings.
        searchable: Whether a study may put it in its search space (else fixed only).
    """

    name: str
    kind: Kind
    default: Any
    help: str
    target: Target
    argument: str | None = None
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    choices: tuple[str, ...] = ()
    searchable: bool = True

    @property
    def key(self) -> str:
        """The keyword the target library takes."""
        return self.argument or self.name

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable, or None when it is."""
        if self.kind is bool:
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if self.kind is str:
            ok = value in self.choices
            return None if ok else f"must be one of {list(self.choices)}, but got {value!r}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, but got {value!r}"
        if self.kind is int and not float(value).is_integer():
            return f"must be an integer, but got {value!r}"
        if not math.isfinite(value):
            return f"must be finite, but got {value!r}"
        if self.low is not None and (
            value < self.low or (not self.low_inclusive and value == self.low)
        ):
            return f"must be {'>=' if self.low_inclusive else '>'} {self.low}, but got {value!r}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high}, but got {value!r}"
        return None

    def cast(self, value: Any) -> Any:
        """``value`` as this setting's type (searched ints may arrive as floats)."""
        return value if value is None else self.kind(value)


HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    # --- the optimiser and schedule (HF TrainingArguments) ------------------------------------
    Hyperparameter(
        "learning_rate",
        float,
        2e-4,
        "Peak learning rate of the optimiser; for LoRA typically 1e-5 to 5e-4.",
        "trainer",
        low=0.0,
        high=1.0,
        low_inclusive=False,
    ),
    Hyperparameter(
        "per_device_train_batch_size",
        int,
        8,
        "Examples per forward pass on one device; memory-bound (too large runs out of memory).",
        "trainer",
        low=1,
        high=4096,
    ),
    Hyperparameter(
        "gradient_accumulation_steps",
        int,
        1,
        "Forward passes per optimiser step (effective batch: batch x accumulation x devices).",
        "trainer",
        low=1,
        high=1024,
    ),
    Hyperparameter(
        "max_steps",
        int,
        None,
        "Optimiser steps to train for; when set it replaces num_train_epochs.",
        "trainer",
        low=1,
        high=10**7,
    ),
    Hyperparameter(
        "num_train_epochs",
        float,
        1.0,
        "Passes over the training data (fractions allowed).",
        "trainer",
        low=0.0,
        high=100.0,
        low_inclusive=False,
    ),
    Hyperparameter(
        "warmup_ratio",
        float,
        0.0,
        "Share of the optimiser steps spent ramping the learning rate up from 0.",
        "trainer",
        argument="warmup_steps",
        low=0.0,
        high=0.99,
    ),
    Hyperparameter(
        "lr_scheduler_type",
        str,
        "linear",
        "How the learning rate moves after warmup (HF names; WSD decays over the last 20%).",
        "trainer",
        choices=LR_SCHEDULERS,
    ),
    Hyperparameter(
        "weight_decay", float, 0.0, "Decoupled (AdamW) weight decay.", "trainer", low=0.0, high=1.0
    ),
    Hyperparameter(
        "max_grad_norm",
        float,
        1.0,
        "Clip gradients to this global norm (0 turns clipping off).",
        "trainer",
        low=0.0,
        high=1000.0,
    ),
    Hyperparameter(
        "neftune_noise_alpha",
        float,
        None,
        "NEFTune: uniform noise of this scale on the input embeddings while training; helps "
        "instruction tuning (5 is common).",
        "trainer",
        low=0.0,
        high=100.0,
    ),
    Hyperparameter(
        "seed",
        int,
        42,
        "Seed of the trial's initialisation, dropout and data order.",
        "trainer",
        low=0,
        high=2**32 - 1,
        searchable=False,
    ),
    Hyperparameter(
        "optim",
        str,
        None,
        "Optimiser (HF name); default AdamW, fused on GPUs.",
        "trainer",
        choices=OPTIMIZERS,
        searchable=False,
    ),
    Hyperparameter(
        "adam_beta1",
        float,
        None,
        "AdamW beta1.",
        "trainer",
        low=0.0,
        high=0.9999,
        searchable=False,
    ),
    Hyperparameter(
        "adam_beta2",
        float,
        None,
        "AdamW beta2.",
        "trainer",
        low=0.0,
        high=0.99999,
        searchable=False,
    ),
    Hyperparameter(
        "adam_epsilon",
        float,
        None,
        "AdamW epsilon.",
        "trainer",
        low=0.0,
        high=1.0,
        low_inclusive=False,
        searchable=False,
    ),
    Hyperparameter(
        "label_smoothing_factor",
        float,
        None,
        "Label smoothing of the loss.",
        "trainer",
        low=0.0,
        high=0.99,
        searchable=False,
    ),
    Hyperparameter(
        "bf16",
        bool,
        None,
        "bfloat16 mixed precision; default on where the GPU supports it.",
        "trainer",
        searchable=False,
    ),
    Hyperparameter(
        "fp16", bool, None, "float16 mixed precision (older GPUs).", "trainer", searchable=False
    ),
    Hyperparameter(
        "gradient_checkpointing",
        bool,
        False,
        "Recompute activations in the backward pass: less memory, slower steps (TRL turns it "
        "on by default; we do not).",
        "trainer",
        argument="activation_checkpointing",  # transformers 5's name for it
        searchable=False,
    ),
    # --- the adapter (PEFT LoraConfig) ----------------------------------------------------------
    Hyperparameter(
        "lora_r",
        int,
        8,
        "LoRA rank: adapter size, memory and speed.",
        "lora",
        argument="r",
        low=1,
        high=1024,
    ),
    Hyperparameter(
        "lora_alpha",
        float,
        None,
        "LoRA scale numerator (scale = alpha / r); default 2 x rank.",
        "lora",
        low=0.0,
        high=8192.0,
        low_inclusive=False,
    ),
    Hyperparameter(
        "lora_dropout", float, 0.0, "Dropout on the LoRA path.", "lora", low=0.0, high=0.9
    ),
    Hyperparameter(
        "lora_target_modules",
        str,
        "attention",
        "Which linear layers get adapters: attention projections, MLP, or all linear layers.",
        "lora",
        argument="target_modules",
        choices=LORA_TARGETS,
    ),
    Hyperparameter(
        "lora_method",
        str,
        "lora",
        "Adapter method: lora; dora (weight-decomposed LoRA); rslora (scale alpha/sqrt(r), "
        "steadier at high ranks); adalora (starts at adalora_init_r and prunes to an average "
        "rank of lora_r, giving more to the modules that matter).",
        "adapter",
        choices=LORA_METHODS,
    ),
    Hyperparameter(
        "init_lora_weights",
        str,
        "default",
        "LoRA initialisation (PEFT's init_lora_weights): default (A Kaiming-uniform, B zero), "
        "gaussian (A normal, B zero), orthogonal (A, B orthogonal with BA = 0; even ranks); "
        "not for adalora, which initialises its own.",
        "adapter",
        choices=LORA_INITS,
    ),
    Hyperparameter(
        "adalora_init_r",
        int,
        None,
        "AdaLoRA's rank before pruning; default 1.5 x lora_r (lora_r is its target average rank).",
        "adapter",
        low=1,
        high=1024,
    ),
    Hyperparameter(
        "adalora_tinit",
        float,
        0.1,
        "AdaLoRA: share of the optimiser steps trained before its rank budget starts to shrink.",
        "adapter",
        low=0.0,
        high=0.9,
    ),
    Hyperparameter(
        "adalora_tfinal",
        float,
        0.2,
        "AdaLoRA: share of the optimiser steps trained at the final rank pattern.",
        "adapter",
        low=0.0,
        high=0.9,
    ),
    Hyperparameter(
        "adalora_delta_t",
        int,
        1,
        "AdaLoRA: optimiser steps between two rank allocations (PEFT's deltaT).",
        "adapter",
        low=1,
        high=10**6,
    ),
    Hyperparameter(
        "adalora_orth_reg_weight",
        float,
        0.5,
        "AdaLoRA: weight of the orthogonality regulariser on its P and Q in the training loss "
        "(evaluation losses leave it out).",
        "adapter",
        low=0.0,
        high=100.0,
    ),
    # --- the data --------------------------------------------------------------------------------
    Hyperparameter(
        "max_seq_length",
        int,
        256,
        "Tokens per example; longer examples are truncated.",
        "data",
        low=8,
        high=131072,
    ),
    Hyperparameter(
        "packing",
        bool,
        False,
        "Pack several examples into each sequence of max_seq_length (TRL's best-fit packing): "
        "no padding, faster steps; attention stays within each example on SDPA/flash.",
        "sft",
        searchable=False,
    ),
    # --- decoding (GenerationConfig): searched in decode studies, fixed in fine-tunes ----------
    Hyperparameter(
        "max_new_tokens",
        int,
        64,
        "Tokens generated per answer at most.",
        "generation",
        low=1,
        high=4096,
    ),
    Hyperparameter(
        "temperature",
        float,
        None,
        "Sampling temperature; unset means greedy decoding.",
        "generation",
        low=0.0,
        high=5.0,
        low_inclusive=False,
    ),
    Hyperparameter(
        "top_p",
        float,
        None,
        "Nucleus sampling: keep the smallest set of tokens with this much probability.",
        "generation",
        low=0.0,
        high=1.0,
        low_inclusive=False,
    ),
    Hyperparameter(
        "top_k",
        int,
        None,
        "Sample among the k most likely tokens only.",
        "generation",
        low=1,
        high=1000,
    ),
    Hyperparameter(
        "min_p",
        float,
        None,
        "Drop tokens below this share of the most likely token's probability.",
        "generation",
        low=0.0,
        high=1.0,
    ),
    Hyperparameter(
        "repetition_penalty",
        float,
        None,
        "Penalty (>1) on tokens already generated.",
        "generation",
        low=0.0,
        high=10.0,
        low_inclusive=False,
    ),
    Hyperparameter(
        "num_beams",
        int,
        None,
        "Beam search width (1: no beam search).",
        "generation",
        low=1,
        high=16,
    ),
)
BY_NAME: dict[str, Hyperparameter] = {hp.name: hp for hp in HYPERPARAMETERS}
SEARCHABLE: dict[str, Hyperparameter] = {hp.name: hp for hp in HYPERPARAMETERS if hp.searchable}


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
