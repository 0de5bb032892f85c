"""One trial's fine-tune: a LoRA adapter on the cached base model, trained by the Trainer
``worker.trainer`` builds, reported on the fidelity axis (``worker.callbacks``), scored at the
end, then taken off the base model. Where a segment resumes and pauses:
``worker.continuation``."""

from __future__ import annotations

import gc
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from peft import AdaLoraConfig, PeftModel, get_peft_model
from peft.utils import ModulesToSaveWrapper
from transformers import PrinterCallback, Trainer, TrainerCallback, set_seed
from transformers.integrations import TensorBoardCallback

from hpo.core import records
from hpo.core.estimate import GENERATION_BATCH
from hpo.core.spec import StudySpec
from worker import generation
from worker.adalora import RankAllocation
from worker.callbacks import FidelityCallback, Interruptions, ProgressCallback, scores
from worker.continuation import Resume, pause, record_resumed_value, retune
from worker.data import DataCache, Splits
from worker.models import LoadedModel
from worker.trainer import build_trainer, examples_per_step, lora_config, total_steps


@dataclass
class TrainResult:
    value: float
    examples_seen: int
    examples_trained: int  # by this segment: a continuation pays for the rest only
    tokens_seen: int
    train_loss: float
    train_seconds: float
    eval_seconds: float
    generation_seconds: float | None  # a generation objective's scoring time
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
    # asked at each report: why the segment gives its worker up now (``Interruptions``)
    should_yield: Callable[[], str | None] | None = None
    max_seconds: float | None = None  # the trial's time limit, from its segment's start


class Scorer:
    """Generation metrics of a trial's model on the evaluation (or test) prompts."""

    def __init__(
        self,
        spec: StudySpec,
        hparams: dict[str, Any],
        loaded: LoadedModel,
        raw: Splits,
        model: Any,
        render_timeout: float | None = None,
    ) -> None:
        self.spec, self.loaded, self.model = spec, loaded, model
        self.render_timeout = render_timeout
        objective = spec.search.objective
        self.metric, self.pattern = objective.metric, objective.pattern
        self.config = generation.decoding(hparams, loaded.tokenizer)
        self.limit = spec.train.evaluation.generation.max_examples
        self.report_limit = spec.train.evaluation.generation.report_limit()
        self.max_prompt_tokens = hparams["max_seq_length"]
        self.raw = raw
        self.seconds = 0.0

    def __call__(self, split: str = "eval", limit: int | None = None) -> float:
        """The metric on the first ``limit`` prompts of ``split`` (default: ``max_examples``)."""
        data = self.raw.eval if split == "eval" else self.raw.test
        assert data is not None
        chosen = generation.examples(data, self.raw.shape, limit or self.limit)
        result = generation.score(
            self.model,
            self.loaded.tokenizer,
            chosen,
            metric=self.metric,
            pattern=self.pattern,
            config=self.config,
            batch_size=GENERATION_BATCH,
            max_prompt_tokens=self.max_prompt_tokens,
            render_timeout=self.render_timeout,
        )
        self.seconds += result.seconds
        return result.value


def train_trial(
    trial: optuna.Trial,
    *,
    spec: StudySpec,
    hparams: dict[str, Any],
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
    set_seed(hparams["seed"])
    steps = total_steps(hparams, len(raw.train))
    config = lora_config(hparams, loaded, spec.train.model.task, steps)
    trainer: Trainer | None = None
    with _attached(loaded, config, device) as model:
        parts = _parts(trial, spec, hparams, model, loaded, raw, cache, stop, hooks, until, resume)
        started = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix=f"hpo-trial{trial.number}-") as tmp:
                out_dir = Path(tmp)
                callbacks = _callbacks(parts, spec, hparams, out_dir)
                trainer, prepared = build_trainer(
                    spec,
                    hparams,
                    loaded=loaded,
                    model=parts.model,
                    raw=raw,
                    cache=cache,
                    out_dir=out_dir,
                    device=device,
                    callbacks=callbacks,
                )
                # what an export must say to train the same way (the device's defaults resolved)
                records.record_precision(
                    trial,
                    bf16=bool(trainer.args.bf16),
                    fp16=bool(trainer.args.fp16),
                    use_cpu=bool(trainer.args.use_cpu),
                )
                return _train(parts, trainer, prepared, raw, out_dir, started)
        except optuna.TrialPruned:
            _record_stopped(trial, trainer, parts.fidelity, started)
            raise
        finally:
            del trainer


@contextmanager
def _attached(loaded: LoadedModel, config: Any, device: torch.device) -> Iterator[PeftModel]:
    """The trial's adapter on the cached base model, for this block only: whatever fails
    after ``get_peft_model`` injected its layers, the base is left as it was."""
    model = get_peft_model(loaded.model, config)
    try:
        yield model
    finally:
        _release(model, device)


@dataclass(frozen=True)
class _Parts:
    """What a trial trains with beside its Trainer."""

    trial: optuna.Trial
    model: PeftModel
    allocation: list[TrainerCallback]  # AdaLoRA's rank allocator, for an AdaLoRA adapter
    fidelity: FidelityCallback
    scorer: Scorer | None
    hooks: TrialHooks
    until: int | None
    resume: Resume | None


def _parts(
    trial: optuna.Trial,
    spec: StudySpec,
    hparams: dict[str, Any],
    model: PeftModel,
    loaded: LoadedModel,
    raw: Splits,
    cache: DataCache,
    stop: threading.Event,
    hooks: TrialHooks,
    until: int | None,
    resume: Resume | None,
) -> _Parts:
    """The trial's adapter (its resolved targets recorded), AdaLoRA's allocator, the
    generation scorer and the fidelity callback."""
    steps = total_steps(hparams, len(raw.train))
    resolved: Any = model.peft_config["default"]
    records.set_resolved_targets(trial, resolved.target_modules)
    allocation: list[TrainerCallback] = (
        [RankAllocation(model, trial, resume.folder if resume else None)]
        if isinstance(resolved, AdaLoraConfig)
        else []
    )
    scorer = (
        Scorer(spec, hparams, loaded, raw, model, cache.prepare_timeout)
        if spec.search.objective.generates
        else None
    )
    fidelity = _fidelity(
        trial,
        spec,
        hparams,
        steps=steps,
        n_train=len(raw.train),
        stop=stop,
        scorer=scorer,
        hooks=hooks,
        until=until,
        resume=resume,
    )
    return _Parts(trial, model, allocation, fidelity, scorer, hooks, until, resume)


def _fidelity(
    trial: optuna.Trial,
    spec: StudySpec,
    hparams: dict[str, Any],
    *,
    steps: int,
    n_train: int,
    stop: threading.Event,
    scorer: Scorer | None,
    hooks: TrialHooks,
    until: int | None,
    resume: Resume | None,
) -> FidelityCallback:
    objective = spec.search.objective
    per_step = examples_per_step(hparams)
    # a generation objective reports its score on a fixed subset (cheap); its value at the
    # end is on the full evaluation set (``_final``)
    reports_generation = scorer is not None and scorer.report_limit > 0
    return FidelityCallback(
        trial,
        metric=objective.metric,
        every_examples=spec.train.evaluation.every_examples,
        examples_per_step=per_step,
        max_examples=steps * per_step
        if hparams["max_steps"]
        else math.ceil(hparams["num_train_epochs"] * n_train),
        interruptions=Interruptions(
            stop,
            deadline=None if hooks.max_seconds is None else time.monotonic() + hooks.max_seconds,
            should_yield=hooks.should_yield,
        ),
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


def _callbacks(
    parts: _Parts, spec: StudySpec, hparams: dict[str, Any], out_dir: Path
) -> list[TrainerCallback]:
    # the allocation first: it records the rank pattern at a report that prunes
    return [
        *parts.allocation,
        parts.fidelity,
        *retune(hparams, parts.resume),
        *_tensorboard(spec, out_dir),
        ProgressCallback(),
        *parts.hooks.extra_callbacks,
    ]


def _train(
    parts: _Parts,
    trainer: Trainer,
    prepared: Splits,
    raw: Splits,
    out_dir: Path,
    started: float,
) -> TrainResult:
    """Train, then score: the baseline first if the study has none, the resumed state's
    value for a continuation, the pause at ``until``, and the trial's final scores."""
    trial, fidelity, scorer, hooks = parts.trial, parts.fidelity, parts.scorer, parts.hooks
    resume = parts.resume
    trainer.remove_callback(PrinterCallback)  # our worker logs one line per event
    baseline = _baseline(trainer, fidelity, scorer) if hooks.baseline_needed else {}
    if resume is not None:
        record_resumed_value(trial, trainer, fidelity, parts.model, resume)
    try:
        output = trainer.train(
            resume_from_checkpoint=str(resume.folder) if resume is not None else None
        )
    finally:
        _keep_logs(out_dir, hooks)
    if fidelity.paused_at is not None:
        pause(trial, trainer, fidelity, hooks, out_dir, parts.until)
    value, metrics = _final(trainer, fidelity, scorer, prepared, raw)
    if hooks.keep_adapter is not None:
        hooks.keep_adapter(value, parts.model)
    return TrainResult(
        value=value,
        examples_seen=fidelity.examples_seen(trainer.state),
        examples_trained=fidelity.trained(trainer.state),
        tokens_seen=int(trainer.state.num_input_tokens_seen),
        train_loss=float(output.training_loss),
        train_seconds=time.perf_counter() - started,
        eval_seconds=fidelity.eval_seconds,
        generation_seconds=scorer.seconds if scorer else None,
        metrics=metrics,
        baseline=baseline,
    )


def _record_stopped(
    trial: optuna.Trial, trainer: Trainer | None, fidelity: FidelityCallback, started: float
) -> None:
    """A pruned trial keeps its records too: how far it got and what it cost."""
    records.record_progress(
        trial,
        train_seconds=time.perf_counter() - started,
        eval_seconds=fidelity.eval_seconds,
        examples_seen=fidelity.examples_seen(trainer.state) if trainer is not None else None,
        examples_trained=fidelity.trained(trainer.state) if trainer is not None else None,
    )
    if records.prune_reason(trial) is None:
        records.set_prune_reason(trial, "pruner")


def _release(peft_model: PeftModel, device: torch.device) -> None:
    """The base model as it was, and the trial's memory back."""
    detach(peft_model)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


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
        baseline = scores(trainer.evaluate())
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
            metrics = scores(trainer.evaluate())
        assert scorer is not None
        value = metrics[scorer.metric] = scorer()
    if prepared.test is not None:
        with fidelity.silenced():
            metrics |= scores(
                trainer.evaluate(eval_dataset=prepared.test, metric_key_prefix="test")
            )
        if scorer is not None and raw.test is not None:
            metrics[f"test_{scorer.metric}"] = scorer("test")
    assert value is not None
    return value, metrics
