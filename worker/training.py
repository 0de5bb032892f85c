"""One trial's fine-tune: params -> TrainingArguments + LoraConfig -> HF Trainer."""

from __future__ import annotations

import gc
import math
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    EvalPrediction,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_pt_utils import LengthGroupedSampler

from hpo.core.hyperparameters import arguments, resolve
from hpo.core.spec import StudySpec
from worker.callbacks import FidelityCallback
from worker.data import Splits
from worker.models import LoadedModel, target_modules


def trial_settings(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    """Every setting of a trial: defaults < the study's fixed ``training`` < sampled params."""
    settings = resolve(spec.train.training.values(), params)
    if settings["lora_alpha"] is None:
        settings["lora_alpha"] = 2.0 * settings["lora_r"]
    return settings


def lora_config(settings: dict[str, Any], loaded: LoadedModel, task: str) -> LoraConfig:
    lora = arguments(settings, "lora")
    lora["target_modules"] = target_modules(loaded.model, lora["target_modules"])
    task_type = TaskType.CAUSAL_LM if task == "causal-lm" else TaskType.SEQ_CLS
    return LoraConfig(task_type=task_type, **lora)


def total_steps(settings: dict[str, Any], n_train: int) -> int:
    per_step = settings["per_device_train_batch_size"] * settings["gradient_accumulation_steps"]
    return max(1, math.ceil(settings["num_train_epochs"] * math.ceil(n_train / per_step)))


def _scheduler_kwargs(settings: dict[str, Any], steps: int) -> dict[str, Any]:
    name = settings["lr_scheduler_type"]
    if name == "warmup_stable_decay":
        return {"num_decay_steps": max(1, steps // 5)}
    if name == "cosine_with_min_lr":
        return {"min_lr_rate": 0.1}
    return {}


def training_arguments(
    settings: dict[str, Any],
    *,
    out_dir: str,
    device: torch.device,
    n_train: int,
    wants_logits: bool,
) -> TrainingArguments:
    cuda = device.type == "cuda"
    trainer = arguments(settings, "trainer")
    trainer.setdefault("bf16", cuda and torch.cuda.is_bf16_supported())
    return TrainingArguments(
        output_dir=out_dir,
        **trainer,
        per_device_eval_batch_size=max(32, settings["per_device_train_batch_size"]),
        lr_scheduler_kwargs=_scheduler_kwargs(settings, total_steps(settings, n_train)),
        use_cpu=not cuda,
        eval_strategy="no",  # FidelityCallback decides when to evaluate
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=10,
        logging_first_step=True,  # the untrained loss: the reference for divergence
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        prediction_loss_only=not wants_logits,
        include_num_input_tokens_seen=True,
        dataloader_pin_memory=cuda,
    )


class LengthGroupedTrainer(Trainer):
    """HF ``Trainer`` whose batches group examples of similar length (less padding).

    HF's own ``group_by_length`` re-reads every example's length at each trial's start;
    the worker's data cache has them already.
    """

    def __init__(self, *args: Any, train_lengths: list[int] | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_lengths = train_lengths

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.train_lengths is None:
            return super()._get_train_sampler(train_dataset)
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedSampler(batch, lengths=self.train_lengths)


def _accuracy(pred: EvalPrediction) -> dict[str, float]:
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == pred.label_ids).mean())}


@dataclass
class TrainResult:
    value: float
    examples_seen: int
    tokens_seen: int
    train_loss: float
    train_seconds: float


def train_trial(
    trial: optuna.Trial,
    *,
    spec: StudySpec,
    settings: dict[str, Any],
    loaded: LoadedModel,
    splits: Splits,
    device: torch.device,
    stop: threading.Event,
    extra_callbacks: Sequence[TrainerCallback] = (),
    keep_adapter: Callable[[float, PeftModel], None] | None = None,
    on_train_begin: Callable[[], None] | None = None,
) -> TrainResult:
    """Train a fresh LoRA adapter on the cached base model; the base model is left untouched.

    Raises:
        optuna.TrialPruned: The pruner stopped the trial, or the loss diverged.
    """
    task = spec.train.model.task
    set_seed(settings["seed"])
    peft_model = get_peft_model(loaded.model, lora_config(settings, loaded, task))
    per_step = settings["per_device_train_batch_size"] * settings["gradient_accumulation_steps"]
    n_train = len(splits.train)
    fidelity = FidelityCallback(
        trial,
        metric=spec.search.objective.metric,
        every_examples=spec.train.evaluation.every_examples,
        examples_per_step=per_step,
        max_examples=math.ceil(settings["num_train_epochs"] * n_train),
        stop=stop,
        divergence_factor=spec.search.objective.divergence_factor,
        on_train_begin=on_train_begin,
    )
    wants_logits = spec.search.objective.metric == "eval_accuracy"
    if task == "causal-lm":
        collator: Any = DataCollatorForLanguageModeling(loaded.tokenizer, mlm=False)
    else:
        collator = DataCollatorWithPadding(loaded.tokenizer)
    trainer: Trainer | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="hpo-trial-") as out_dir:
            trainer = LengthGroupedTrainer(
                model=peft_model,
                train_lengths=splits.train_lengths,
                args=training_arguments(
                    settings,
                    out_dir=out_dir,
                    device=device,
                    n_train=n_train,
                    wants_logits=wants_logits,
                ),
                train_dataset=splits.train,
                eval_dataset=splits.eval,
                data_collator=collator,
                compute_metrics=_accuracy if wants_logits else None,
                callbacks=[fidelity, *extra_callbacks],
            )
            trainer.remove_callback(PrinterCallback)  # our worker logs one line per event
            started = time.perf_counter()
            output = trainer.train()
            if fidelity.examples_seen(trainer.state) not in fidelity.reported:
                trainer.evaluate()
            train_seconds = time.perf_counter() - started
            assert fidelity.last_value is not None
            if keep_adapter is not None:
                keep_adapter(fidelity.last_value, peft_model)
            return TrainResult(
                value=fidelity.last_value,
                examples_seen=fidelity.examples_seen(trainer.state),
                tokens_seen=int(trainer.state.num_input_tokens_seen),
                train_loss=float(output.training_loss),
                train_seconds=train_seconds,
            )
    finally:
        del trainer
        peft_model.unload()  # removes the LoRA layers, restoring the cached base model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
