"""Base models and tokenizers, loaded once per worker process and reused by every trial."""

from __future__ import annotations

import gc
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from hpo.core.artifacts import unpack
from hpo.core.gguf import check_gguf
from hpo.core.settings import Settings
from hpo.core.spec import ModelSpec, is_gguf
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

    def __init__(
        self,
        *,
        device: torch.device,
        cache_dir: Path,
        trust_remote_code: bool = False,
        gguf_max_items: int = Settings.model_fields["gguf_max_items"].default,
    ):
        self.device = device
        self.gguf_max_items = gguf_max_items
        self.cache_dir = cache_dir
        self.trust_remote_code = trust_remote_code
        self.load_count = 0
        self._key: tuple[Any, ...] | None = None
        self._loaded: LoadedModel | None = None

    def get(self, spec: ModelSpec, *, label_names: list[Any] | None = None) -> LoadedModel:
        key = (spec.model_dump_json(), tuple(label_names or ()))
        # A base that still carries adapter layers (a trial that died between attaching its
        # adapter and taking it off) would hand them to the next trial: load it again.
        if self._key == key and self._loaded is not None and not _has_adapter(self._loaded):
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
        if is_gguf(path):  # transformers dequantizes it; the file is read by every worker
            # The gguf reader trusts the header's counts: check them against the file first.
            check_gguf(os.path.realpath(path), max_items=self.gguf_max_items)
            path, kwargs["gguf_file"] = os.path.split(os.path.realpath(path))
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        dtype = resolve_dtype(spec, self.device)
        if spec.task == "causal-lm":
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
        else:
            names = [str(n) for n in label_names or ()]
            model = AutoModelForSequenceClassification.from_pretrained(
                path,
                dtype=dtype,
                num_labels=len(names),
                id2label=dict(enumerate(names)),  # saved with each adapter: named predictions
                label2id={n: i for i, n in enumerate(names)},
                **kwargs,
            )
            model.config.pad_token_id = tokenizer.pad_token_id
        if "gguf_file" in kwargs:
            # Every GGUF tensor was dequantized to float on load; only the quantizer's marks
            # remain, and they make Trainer refuse to train. Drop them, as transformers does.
            quantizer: Any = model.hf_quantizer
            quantizer.remove_quantization_config(model)
        model.to(self.device)  # type: ignore[arg-type]  # transformers' stub misreads .to
        self.load_count += 1
        self._key, self._loaded = key, LoadedModel(model, tokenizer, path)
        freeze_long_lived()
        return self._loaded

    def clear(self) -> None:
        self._key = self._loaded = None


def _has_adapter(loaded: LoadedModel) -> bool:
    return any(isinstance(module, BaseTunerLayer) for module in loaded.model.modules())


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


class AdapterCache:
    """Adapters from the artifact store, fetched and unpacked once per worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.cache_dir / "adapters"
        self._folders: dict[str, Path] = {}

    def folder(self, artifact_id: str) -> Path:
        if artifact_id not in self._folders:
            target = Path(tempfile.mkdtemp(prefix="adapter-", dir=self._ensure_root()))
            unpack(self.settings, artifact_id, target)
            self._folders[artifact_id] = target
        return self._folders[artifact_id]

    def _ensure_root(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root
