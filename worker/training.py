"""One trial's fine-tune: params -> TrainingArguments (TRL's SFTConfig for causal LMs) +
LoraConfig -> a Trainer over the cached base model and the cached prepared data."""

from __future__ import annotations

import gc
import json
import math
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from peft import (
    AdaLoraConfig,
    LoraConfig,
    PeftModel,
    TaskType,
    get_peft_model,
    set_peft_model_state_dict,
)
from peft.utils import SAFETENSORS_WEIGHTS_NAME as ADAPTER_SAFE_WEIGHTS_NAME
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import load_file
from transformers import (
    DataCollatorWithPadding,
    EvalPrediction,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.integrations import TensorBoardCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTTrainer

from hpo.core.budget import EXAMPLES_TRAINED_ATTR
from hpo.core.export import RESOLVED_TARGETS_ATTR
from hpo.core.hyperparameters import arguments, peft_config, resolve, scheduler_kwargs
from hpo.core.spec import StudySpec
from hpo.core.storage import PAUSED_AT_ATTR, PRUNE_REASON_ATTR
from worker import generation, sft
from worker.adalora import RankAllocation
from worker.callbacks import (
    FidelityCallback,
    Paused,
    ProgressCallback,
    Retune,
    WorkerShutdown,
)
from worker.data import DataCache, Splits, tokenize_classification
from worker.models import LoadedModel, target_modules

GENERATION_BATCH = 16
RESUMED_VALUE_ATTR = "resumed_value"


def trial_settings(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    """Every setting of a trial: defaults < the study's fixed ``training`` < sampled params."""
    return resolve(spec.train.training.values(), params)


def lora_config(
    settings: dict[str, Any], loaded: LoadedModel, task: str, steps: int = 1
) -> LoraConfig:
    """The trial's PEFT config (an ``AdaLoraConfig`` for adalora, over ``steps`` steps)."""
    name, kwargs = peft_config(settings, steps)
    kwargs["target_modules"] = target_modules(loaded.model, kwargs["target_modules"])
    task_type = TaskType.CAUSAL_LM if task == "causal-lm" else TaskType.SEQ_CLS
    config_class = AdaLoraConfig if name == "AdaLoraConfig" else LoraConfig
    return config_class(task_type=task_type, **kwargs)


def examples_per_step(settings: dict[str, Any]) -> int:
    return settings["per_device_train_batch_size"] * settings["gradient_accumulation_steps"]


def total_steps(settings: dict[str, Any], n_train: int) -> int:
    if settings["max_steps"] is not None:
        return int(settings["max_steps"])
    per_epoch = math.ceil(n_train / examples_per_step(settings))
    return max(1, math.ceil(settings["num_train_epochs"] * per_epoch))


def trainer_arguments(
    settings: dict[str, Any],
    spec: StudySpec,
    *,
    out_dir: str,
    device: torch.device,
    n_train: int,
    wants_logits: bool,
) -> dict[str, Any]:
    """TrainingArguments' keywords for a trial (SFTConfig takes them too)."""
    cuda = device.type == "cuda"
    trainer = arguments(settings, "trainer")
    trainer.setdefault("bf16", cuda and torch.cuda.is_bf16_supported())
    batch = settings["per_device_train_batch_size"]
    return {
        "output_dir": out_dir,
        **trainer,
        "per_device_eval_batch_size": spec.train.evaluation.batch_size or max(32, batch),
        "lr_scheduler_kwargs": scheduler_kwargs(settings, total_steps(settings, n_train)),
        "use_cpu": not cuda,
        "eval_strategy": "no",  # FidelityCallback decides when to evaluate
        "save_strategy": "no",
        "logging_strategy": "steps",
        "logging_steps": 10,
        "logging_first_step": True,  # the untrained loss: the reference for divergence
        # TensorBoard gets a callback of ours (see _tensorboard); W&B / MLflow go as HF's.
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
        return EpochSeededLengthGroupedSampler(batch, lengths=self.train_lengths,
                                               seed=self.args.seed)  # fmt: skip


class LengthGroupedTrainer(_LengthGrouped, Trainer):
    def __init__(self, *args: Any, train_lengths: list[int] | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_lengths = train_lengths


class LengthGroupedSFTTrainer(_LengthGrouped, SFTTrainer):
    def __init__(self, *args: Any, train_lengths: list[int] | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_lengths = train_lengths


def _accuracy(pred: EvalPrediction) -> dict[str, float]:
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == pred.label_ids).mean())}


@dataclass
class TrainResult:
    value: float
    examples_seen: int
    examples_trained: int  # by this segment: a continuation pays for the rest only
    tokens_seen: int
    train_loss: float
    train_seconds: float
    # eval_loss, eval_accuracy, generation metrics, test_* scores: whatever the trial measured
    metrics: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)


@dataclass
class TrialHooks:
    """What the worker does around training, each optional."""

    extra_callbacks: Sequence[TrainerCallback] = ()
    on_train_begin: Callable[[], None] | None = None
    # (value, adapter, label-named base config) when the trial finished
    keep_adapter: Callable[[float, PeftModel], None] | None = None
    keep_logs: Callable[[Path], None] | None = None  # the TensorBoard folder, when written
    # the Trainer checkpoint folder of a segment that pauses; must raise if it cannot keep it
    keep_checkpoint: Callable[[Path], None] | None = None
    baseline_needed: bool = False


@dataclass(frozen=True)
class Resume:
    """Where a continuation starts: the saved state of the segment it continues (a Trainer
    checkpoint folder), that segment's reports and its first training loss."""

    folder: Path
    reported: dict[int, float]
    initial_loss: float | None


def _prepared(
    spec: StudySpec,
    settings: dict[str, Any],
    loaded: LoadedModel,
    raw: Splits,
    cache: DataCache,
    args: Any,
) -> Splits:
    """The trial's tokenized splits, prepared once per process and kept in ``cache``."""
    key = (spec.train.dataset.model_dump_json(), spec.train.model.task, loaded.path,
           settings["max_seq_length"], settings["packing"], spec.train.loss_on)  # fmt: skip
    found = cache.prepared(key)
    if found is not None:
        return found
    with cache.bounded("tokenizing the dataset (chat template included)"):
        if spec.train.model.task == "sequence-classification":
            prepared = tokenize_classification(raw, loaded.tokenizer, settings["max_seq_length"])
        else:
            prepared = sft.prepare(raw, args, loaded.model, loaded.tokenizer)
    return cache.keep(key, prepared)


def _build(
    spec: StudySpec,
    settings: dict[str, Any],
    loaded: LoadedModel,
    model: PeftModel,
    raw: Splits,
    cache: DataCache,
    kwargs: dict[str, Any],
    callbacks: list[TrainerCallback],
) -> tuple[Trainer, Splits]:
    if spec.train.model.task == "sequence-classification":
        prepared = _prepared(spec, settings, loaded, raw, cache, None)
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
    sft_kwargs = {"max_length": settings["max_seq_length"], "packing": settings["packing"]}
    prepare_args = sft.config(kwargs, loss_on=spec.train.loss_on, splits=raw,
                              tokenizer=loaded.tokenizer, **sft_kwargs)  # fmt: skip
    prepared = _prepared(spec, settings, loaded, raw, cache, prepare_args)
    args = sft.config(kwargs, loss_on=spec.train.loss_on, splits=raw, tokenizer=loaded.tokenizer,
                      dataset_kwargs={"skip_prepare_dataset": True}, **sft_kwargs)  # fmt: skip
    trainer = LengthGroupedSFTTrainer(
        model=model,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        processing_class=loaded.tokenizer,
        callbacks=callbacks,
        train_lengths=None if settings["packing"] else prepared.train_lengths,
    )
    return trainer, prepared


class Scorer:
    """Generation metrics of a trial's model on the evaluation (or test) prompts."""

    def __init__(self, spec: StudySpec, settings: dict[str, Any], loaded: LoadedModel,
                 raw: Splits, model: Any,
                 render_timeout: float | None = None) -> None:  # fmt: skip
        self.spec, self.loaded, self.model = spec, loaded, model
        self.render_timeout = render_timeout
        objective = spec.search.objective
        self.metric, self.pattern = objective.metric, objective.pattern
        self.config = generation.decoding(settings, loaded.tokenizer)
        self.limit = spec.train.evaluation.generation.max_examples
        self.report_limit = spec.train.evaluation.generation.report_limit()
        self.max_prompt_tokens = settings["max_seq_length"]
        self.raw = raw
        self.seconds = 0.0

    def __call__(self, split: str = "eval", limit: int | None = None) -> float:
        """The metric on the first ``limit`` prompts of ``split`` (default: ``max_examples``)."""
        data = self.raw.eval if split == "eval" else self.raw.test
        assert data is not None
        chosen = generation.examples(data, self.raw.shape, limit or self.limit)
        result = generation.score(self.model, self.loaded.tokenizer, chosen, metric=self.metric,
                                  pattern=self.pattern, config=self.config,
                                  batch_size=GENERATION_BATCH,
                                  max_prompt_tokens=self.max_prompt_tokens,
                                  render_timeout=self.render_timeout)  # fmt: skip
        self.seconds += result.seconds
        return result.value


def train_trial(
    trial: optuna.Trial,
    *,
    spec: StudySpec,
    settings: dict[str, Any],
    loaded: LoadedModel,
    raw: Splits,
    cache: DataCache,
    device: torch.device,
    stop: threading.Event,
    hooks: TrialHooks | None = None,
    until: int | None = None,
    resume: Resume | None = None,
) -> TrainResult:
    """Train a LoRA adapter on the cached base model; the base model is left untouched.

    The adapter is fresh, or with ``resume`` the saved state of a paused segment, trained on
    from where it stopped. With ``until`` training pauses at the first report at or after
    that many examples and keeps its state (``hooks.keep_checkpoint``).

    Raises:
        optuna.TrialPruned: The pruner stopped the trial, or the loss diverged.
        Paused: The segment reached ``until`` and its state was kept.
    """
    hooks = hooks or TrialHooks()
    task = spec.train.model.task
    objective = spec.search.objective
    set_seed(settings["seed"])
    per_step = examples_per_step(settings)
    n_train = len(raw.train)
    steps = total_steps(settings, n_train)
    peft_model = get_peft_model(loaded.model, lora_config(settings, loaded, task, steps))
    resolved: Any = peft_model.peft_config["default"]
    trial.set_user_attr(RESOLVED_TARGETS_ATTR, sorted(resolved.target_modules))
    allocation = (
        [RankAllocation(peft_model, trial, resume.folder if resume else None)]
        if isinstance(resolved, AdaLoraConfig)
        else []
    )
    scorer = (
        Scorer(spec, settings, loaded, raw, peft_model, cache.prepare_timeout)
        if objective.generates
        else None
    )
    # a generation objective reports its score on a fixed subset (cheap); its value at the
    # end is on the full evaluation set (``_final``)
    reports_generation = scorer is not None and scorer.report_limit > 0
    fidelity = FidelityCallback(
        trial,
        metric=objective.metric,
        every_examples=spec.train.evaluation.every_examples,
        examples_per_step=per_step,
        max_examples=steps * per_step
        if settings["max_steps"]
        else math.ceil(settings["num_train_epochs"] * n_train),
        stop=stop,
        divergence_factor=objective.divergence_factor,
        on_train_begin=hooks.on_train_begin,
        score=(lambda metrics: scorer(limit=scorer.report_limit))
        if reports_generation and scorer
        else None,
        reports=scorer is None or reports_generation,
        until=until,
        resumed=resume.reported if resume else None,
        initial_loss=resume.initial_loss if resume else None,
    )
    trainer: Trainer | None = None
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix=f"hpo-trial{trial.number}-") as out_dir:
            kwargs = trainer_arguments(
                settings,
                spec,
                out_dir=out_dir,
                device=device,
                n_train=n_train,
                wants_logits=task != "causal-lm",
            )
            retune = [] if resume is None else [
                Retune(learning_rate=settings["learning_rate"],
                       weight_decay=settings["weight_decay"])]  # fmt: skip
            # the allocation first: it records the rank pattern at a report that prunes
            callbacks = [*allocation, fidelity, *retune, *_tensorboard(spec, Path(out_dir)),
                         ProgressCallback(), *hooks.extra_callbacks]  # fmt: skip
            trainer, prepared = _build(
                spec, settings, loaded, peft_model, raw, cache, kwargs, callbacks
            )
            trainer.remove_callback(PrinterCallback)  # our worker logs one line per event
            baseline = _baseline(trainer, fidelity, scorer) if hooks.baseline_needed else {}
            if resume is not None:
                resumed = _resumed_value(trainer, fidelity, peft_model, resume)
                trial.set_user_attr(RESUMED_VALUE_ATTR, resumed)
            try:
                output = trainer.train(
                    resume_from_checkpoint=str(resume.folder) if resume is not None else None
                )
            finally:
                _keep_logs(Path(out_dir), hooks)
            if fidelity.paused_at is not None:
                _pause(trial, trainer, fidelity, hooks, Path(out_dir), until)
            value, metrics = _final(trainer, fidelity, scorer, prepared, raw)
            if hooks.keep_adapter is not None:
                hooks.keep_adapter(value, peft_model)
            return TrainResult(
                value=value,
                examples_seen=fidelity.examples_seen(trainer.state),
                examples_trained=fidelity.trained(trainer.state),
                tokens_seen=int(trainer.state.num_input_tokens_seen),
                train_loss=float(output.training_loss),
                train_seconds=time.perf_counter() - started,
                metrics=metrics
                | {"eval_seconds": fidelity.eval_seconds}
                | ({"generation_seconds": scorer.seconds} if scorer else {}),
                baseline=baseline,
            )
    except optuna.TrialPruned:
        # A pruned trial keeps its records too: how far it got and what it cost.
        if trainer is not None:
            trial.set_user_attr("examples_seen", fidelity.examples_seen(trainer.state))
            trial.set_user_attr(EXAMPLES_TRAINED_ATTR, fidelity.trained(trainer.state))
        trial.set_user_attr("train_seconds", round(time.perf_counter() - started, 4))
        trial.set_user_attr("eval_seconds", round(fidelity.eval_seconds, 4))
        if PRUNE_REASON_ATTR not in trial.user_attrs:
            trial.set_user_attr(PRUNE_REASON_ATTR, "pruner")
        raise
    finally:
        del trainer
        detach(peft_model)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _resumed_value(
    trainer: Trainer, fidelity: FidelityCallback, peft_model: PeftModel, resume: Resume
) -> float:
    """The objective on the state loaded, before any step: the paused segment's last report,
    if the state and the evaluation examples are what it saw (a continuation, not a restart).
    Trainer loads the same weights again as it resumes."""
    set_peft_model_state_dict(peft_model, load_file(resume.folder / ADAPTER_SAFE_WEIGHTS_NAME))
    with fidelity.silenced(), torch.random.fork_rng():
        return fidelity.score(_scores(trainer.evaluate()))


def _pause(
    trial: optuna.Trial,
    trainer: Trainer,
    fidelity: FidelityCallback,
    hooks: TrialHooks,
    out_dir: Path,
    until: int | None,
) -> None:
    """Keep the state Trainer saved at the pause, then mark the trial paused (in that order:
    a trial marked paused can always be continued)."""
    assert hooks.keep_checkpoint is not None, "a segment that pauses needs keep_checkpoint"
    hooks.keep_checkpoint(out_dir / f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    trial.set_user_attr(PAUSED_AT_ATTR, until)
    reason = f"paused at {fidelity.paused_at} examples (rung {until})"
    trial.set_user_attr(PRUNE_REASON_ATTR, reason)
    raise Paused(reason, dict(fidelity.reported))


def cooled_score(
    *,
    spec: StudySpec,
    settings: dict[str, Any],
    loaded: LoadedModel,
    raw: Splits,
    cache: DataCache,
    device: torch.device,
    stop: threading.Event,
    checkpoint: Path,
    reported: dict[int, float],
) -> float | None:
    """WSD cool-down scoring: the objective after a branch from a paused segment's
    stable-phase ``checkpoint`` that runs the same warmup_stable_decay schedule on a quarter
    more steps, so the learning rate decays over the branch. The branch is thrown away (the
    configuration continues from ``checkpoint``); None when it diverged or the worker stops."""
    state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    steps = int(state["global_step"])
    branch = {**settings, "max_steps": steps + max(1, steps // 4)}
    scratch = optuna.create_study(
        direction=spec.search.objective.direction, pruner=optuna.pruners.NopPruner()
    ).ask()
    try:
        result = train_trial(scratch, spec=spec, settings=branch, loaded=loaded, raw=raw,
                             cache=cache, device=device, stop=stop,
                             resume=Resume(checkpoint, reported, None))  # fmt: skip
    except (optuna.TrialPruned, WorkerShutdown):
        return None
    return result.value


def detach(peft_model: PeftModel) -> None:
    """Take the trial's adapter off the cached base model and leave the base as it was.

    ``unload()`` removes the LoRA layers, but puts the trial's trained copy of each fully
    trained module (a classifier head, PEFT's modules_to_save) in place of the original: the
    next trial would start from this one's head. The originals go back.
    """
    wrapped = {
        name.removeprefix("base_model.model."): module.original_module
        for name, module in peft_model.named_modules()
        if isinstance(module, ModulesToSaveWrapper)
    }
    base = peft_model.unload()
    for name, original in wrapped.items():
        parent, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent), child, original)


def _tensorboard(spec: StudySpec, out_dir: Path) -> list[TrainerCallback]:
    """HF's TensorBoard callback, writing into the trial's folder: left to itself it would open
    its writer in the working directory when an evaluation logs before training starts."""
    if "tensorboard" not in spec.train.report_to:
        return []
    callback = TensorBoardCallback()
    callback.logging_dir = str(out_dir / "runs")
    return [callback]


def _keep_logs(out_dir: Path, hooks: TrialHooks) -> None:
    logs = out_dir / "runs"
    if hooks.keep_logs is not None and logs.is_dir():
        hooks.keep_logs(logs)


def _baseline(
    trainer: Trainer, fidelity: FidelityCallback, scorer: Scorer | None
) -> dict[str, float]:
    """The untuned model's scores on the evaluation data: the fresh adapter is the identity
    (LoRA's B starts at zero), so this is the base model, on exactly the trial's examples.
    It draws no random numbers the training would have drawn: a trial trains the same with or
    without it."""
    with fidelity.silenced(), torch.random.fork_rng():
        baseline = _scores(trainer.evaluate())
        if scorer is not None:
            baseline[scorer.metric] = scorer()
    return baseline


def _final(
    trainer: Trainer,
    fidelity: FidelityCallback,
    scorer: Scorer | None,
    prepared: Splits,
    raw: Splits,
) -> tuple[float, dict[str, float]]:
    """The trial's value and every score at the end of training: the last evaluation (run now
    if the last report came before the end), generation, and the held-out test split."""
    if fidelity.reports:
        if fidelity.examples_seen(trainer.state) not in fidelity.reported:
            trainer.evaluate()  # the final point, reported on the fidelity axis
        metrics = dict(fidelity.last_metrics)
        value = fidelity.last_value
        if scorer is not None and scorer.report_limit < scorer.limit:
            value = metrics[scorer.metric] = scorer()  # reports scored a subset; this, all
    else:  # a generation objective scored once, at the end
        with fidelity.silenced():
            metrics = _scores(trainer.evaluate())
        assert scorer is not None
        value = metrics[scorer.metric] = scorer()
    if prepared.test is not None:
        with fidelity.silenced():
            metrics |= _scores(
                trainer.evaluate(eval_dataset=prepared.test, metric_key_prefix="test")
            )
        if scorer is not None and raw.test is not None:
            metrics[f"test_{scorer.metric}"] = scorer("test")
    assert value is not None
    return value, metrics


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
    """Scores from HF's evaluation metrics (not its runtime figures)."""
    keep = ("_loss", "_accuracy")
    return {k: float(v) for k, v in metrics.items() if k.endswith(keep)}
