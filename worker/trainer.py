"""The Trainer a trial trains with: its hyperparameters as TrainingArguments (TRL's SFTConfig
for causal LMs) and a LoraConfig, and a Trainer that batches examples of similar length over
the data prepared once per process."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import modeling as accelerate_modeling
from huggingface_hub import constants as hub_constants
from peft import AdaLoraConfig, LoraConfig, PeftModel, TaskType
from transformers import (
    DataCollatorWithPadding,
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_pt_utils import LengthGroupedSampler
from trl import SFTTrainer

from hpo.core.hyperparameters import arguments, peft_config, resolve, scheduler_kwargs
from hpo.core.spec import StudySpec
from worker import sft
from worker.data import DataCache, Splits, tokenize_classification
from worker.models import LoadedModel, target_modules


def trial_hparams(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    """The value of every hyperparameter of a trial: defaults < the study's fixed
    ``training`` < the trial's sampled ``params``."""
    return resolve(spec.train.training.values(), params)


def lora_config(
    hparams: dict[str, Any], loaded: LoadedModel, task: str, steps: int = 1
) -> LoraConfig:
    """The trial's PEFT config (an ``AdaLoraConfig`` for adalora, over ``steps`` steps)."""
    name, kwargs = peft_config(hparams, steps)
    kwargs["target_modules"] = target_modules(loaded.model, kwargs["target_modules"])
    task_type = TaskType.CAUSAL_LM if task == "causal-lm" else TaskType.SEQ_CLS
    config_class = AdaLoraConfig if name == "AdaLoraConfig" else LoraConfig
    return config_class(task_type=task_type, **kwargs)


def examples_per_step(hparams: dict[str, Any]) -> int:
    return hparams["per_device_train_batch_size"] * hparams["gradient_accumulation_steps"]


def total_steps(hparams: dict[str, Any], n_train: int) -> int:
    if hparams["max_steps"] is not None:
        return int(hparams["max_steps"])
    per_epoch = math.ceil(n_train / examples_per_step(hparams))
    return max(1, math.ceil(hparams["num_train_epochs"] * per_epoch))


def trainer_arguments(
    hparams: dict[str, Any],
    spec: StudySpec,
    *,
    out_dir: str,
    device: torch.device,
    n_train: int,
    wants_logits: bool,
) -> dict[str, Any]:
    """TrainingArguments' keywords for a trial (SFTConfig takes them too)."""
    cuda = device.type == "cuda"
    trainer = arguments(hparams, "trainer")
    trainer.setdefault("bf16", cuda and torch.cuda.is_bf16_supported())
    batch = hparams["per_device_train_batch_size"]
    return {
        "output_dir": out_dir,
        **trainer,
        "per_device_eval_batch_size": spec.train.evaluation.batch_size or max(32, batch),
        "lr_scheduler_kwargs": scheduler_kwargs(hparams, total_steps(hparams, n_train)),
        "use_cpu": not cuda,
        "eval_strategy": "no",  # FidelityCallback decides when to evaluate
        "save_strategy": "no",
        "logging_strategy": "steps",
        "logging_steps": 10,
        "logging_first_step": True,  # the untrained loss: the reference for divergence
        # TensorBoard gets a callback of ours (training._tensorboard); W&B / MLflow go as HF's.
        "report_to": [r for r in spec.train.report_to if r != "tensorboard"] or "none",
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "prediction_loss_only": not wants_logits,
        "include_num_input_tokens_seen": True,
        "dataloader_pin_memory": cuda,
    }


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """HF's length-grouped order, drawn from (seed, epoch) alone (accelerate calls
    ``set_epoch``): a continued segment sees each epoch in the order the paused one did, and
    nothing that draws random numbers before training (an evaluation's data loader) moves it.
    """

    def __init__(self, batch_size: int, *, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed + epoch)


class _LengthGrouped:
    """Batches of examples of similar length (less padding), from lengths the worker's data
    cache holds: HF's own ``group_by_length`` re-reads them at every trial's start."""

    train_lengths: list[int] | None
    args: TrainingArguments

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.train_lengths is None:
            return super()._get_train_sampler(train_dataset)  # type: ignore[misc]
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return EpochSeededLengthGroupedSampler(
            batch, lengths=self.train_lengths, seed=self.args.seed
        )


class LengthGroupedTrainer(_LengthGrouped, Trainer):
    def __init__(self, *args: Any, train_lengths: list[int] | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_lengths = train_lengths


class LengthGroupedSFTTrainer(_LengthGrouped, SFTTrainer):
    def __init__(self, *args: Any, train_lengths: list[int] | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_lengths = train_lengths


def _lighten_trainer_construction() -> None:
    """Two costs every Trainer construction pays, taken off (idempotent).

    accelerate's ``is_peft_available`` reads package metadata from disk on each call, and a
    Trainer asks ``is_peft_model`` several times while it is built: 2-8 ms a call, tens of
    milliseconds of every trial's setup. TRL's trainers queue a telemetry ping to the Hub at
    each construction; a worker sends nothing anywhere.
    """
    if not hasattr(accelerate_modeling.is_peft_available, "cache_info"):
        accelerate_modeling.is_peft_available = functools.cache(
            accelerate_modeling.is_peft_available
        )
    hub_constants.HF_HUB_DISABLE_TELEMETRY = True


def _accuracy(pred: EvalPrediction) -> dict[str, float]:
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == pred.label_ids).mean())}


def _prepared(
    spec: StudySpec,
    hparams: dict[str, Any],
    loaded: LoadedModel,
    raw: Splits,
    cache: DataCache,
    args: Any,
) -> Splits:
    """The trial's tokenized splits, prepared once per process and kept in ``cache``."""
    key = (
        spec.train.dataset.model_dump_json(),
        spec.train.model.task,
        loaded.path,
        hparams["max_seq_length"],
        hparams["packing"],
        spec.train.loss_on,
    )
    found = cache.prepared(key)
    if found is not None:
        return found
    with cache.bounded("tokenizing the dataset (chat template included)"):
        if spec.train.model.task == "sequence-classification":
            prepared = tokenize_classification(raw, loaded.tokenizer, hparams["max_seq_length"])
        else:
            prepared = sft.prepare(raw, args, loaded.model, loaded.tokenizer)
    return cache.keep(key, prepared)


def build_trainer(
    spec: StudySpec,
    hparams: dict[str, Any],
    *,
    loaded: LoadedModel,
    model: PeftModel,
    raw: Splits,
    cache: DataCache,
    out_dir: Path,
    device: torch.device,
    callbacks: list[TrainerCallback],
) -> tuple[Trainer, Splits]:
    """The trial's Trainer over ``model`` (writing into ``out_dir``) and the prepared splits
    it trains and evaluates on."""
    _lighten_trainer_construction()
    kwargs = trainer_arguments(
        hparams,
        spec,
        out_dir=str(out_dir),
        device=device,
        n_train=len(raw.train),
        wants_logits=spec.train.model.task != "causal-lm",
    )
    if spec.train.model.task == "sequence-classification":
        prepared = _prepared(spec, hparams, loaded, raw, cache, None)
        trainer: Trainer = LengthGroupedTrainer(
            model=model,
            args=TrainingArguments(**kwargs),
            train_dataset=prepared.train,
            eval_dataset=prepared.eval,
            data_collator=DataCollatorWithPadding(loaded.tokenizer),
            compute_metrics=_accuracy,
            callbacks=callbacks,
            train_lengths=prepared.train_lengths,
        )
        return trainer, prepared
    sft_kwargs = {"max_length": hparams["max_seq_length"], "packing": hparams["packing"]}
    prepare_args = sft.config(
        kwargs, loss_on=spec.train.loss_on, splits=raw, tokenizer=loaded.tokenizer, **sft_kwargs
    )
    prepared = _prepared(spec, hparams, loaded, raw, cache, prepare_args)
    args = sft.config(
        kwargs,
        loss_on=spec.train.loss_on,
        splits=raw,
        tokenizer=loaded.tokenizer,
        dataset_kwargs={"skip_prepare_dataset": True},
        **sft_kwargs,
    )
    trainer = LengthGroupedSFTTrainer(
        model=model,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        processing_class=loaded.tokenizer,
        callbacks=callbacks,
        train_lengths=None if hparams["packing"] else prepared.train_lengths,
    )
    return trainer, prepared
