"""Base models and tokenizers, loaded once per worker process and reused by every trial."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from hpo.core.spec import ModelSpec
from worker import builtin

ATTENTION_MODULES = {
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "query",
    "key",
    "value",
    "qkv_proj",
    "c_attn",
    "out_proj",
    "Wqkv",
}
MLP_MODULES = {"gate_proj", "up_proj", "down_proj", "fc1", "fc2", "c_fc", "w1", "w2", "w3"}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: str


def freeze_long_lived() -> None:
    """Move what is alive now (base model, tokenizer, datasets) out of the GC's reach.

    accelerate runs a full ``gc.collect()`` at every training start; walking the cached model
    and data made that 0.2 s of every trial's setup on the tiny model (0.02 s once frozen).
    """
    gc.collect()
    gc.freeze()


def resolve_dtype(spec: ModelSpec, device: torch.device) -> torch.dtype:
    if spec.dtype != "auto":
        return getattr(torch, spec.dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class ModelCache:
    """Keeps the last base model on the device; a different model replaces it.

    ``load_count`` counts real loads, so tests can check reuse without timing.
    """

    def __init__(self, *, device: torch.device, cache_dir: Path, trust_remote_code: bool = False):
        self.device = device
        self.cache_dir = cache_dir
        self.trust_remote_code = trust_remote_code
        self.load_count = 0
        self._key: tuple[Any, ...] | None = None
        self._loaded: LoadedModel | None = None

    def get(self, spec: ModelSpec, *, num_labels: int | None = None) -> LoadedModel:
        key = (spec.model_dump_json(), num_labels)
        if self._key == key and self._loaded is not None:
            return self._loaded
        self.clear()
        gc.unfreeze()  # let the previous model's objects be collected
        path = spec.name_or_path
        if builtin.is_builtin(path):
            path = str(builtin.resolve(path, self.cache_dir))
        kwargs: dict[str, Any] = {
            "revision": spec.revision,
            "trust_remote_code": self.trust_remote_code,
        }
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        dtype = resolve_dtype(spec, self.device)
        if spec.task == "causal-lm":
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=dtype, num_labels=num_labels, **kwargs
            )
            model.config.pad_token_id = tokenizer.pad_token_id
        model.to(self.device)  # type: ignore[arg-type]  # transformers' stub misreads .to
        self.load_count += 1
        self._key, self._loaded = key, LoadedModel(model, tokenizer, path)
        freeze_long_lived()
        return self._loaded

    def clear(self) -> None:
        self._key = self._loaded = None


def target_modules(model: torch.nn.Module, choice: str) -> list[str] | str:
    """LoRA target module names for ``attention``, ``mlp`` or ``all-linear``."""
    if choice == "all-linear":
        return "all-linear"
    wanted = ATTENTION_MODULES if choice == "attention" else MLP_MODULES
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in wanted
    }
    if not names:
        raise ValueError(f"no {choice} linear layers found in {type(model).__name__}")
    return sorted(names)
