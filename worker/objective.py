"""The Optuna objective a worker runs: one trial, its records, and how it may fail."""

from __future__ import annotations

import functools
import json
import logging
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
import torch
from optuna.study import StudyDirection
from peft import PeftModel
from sqlalchemy.orm import Session, sessionmaker
from transformers import TrainerCallback

from hpo.core import artifacts, budget, records
from hpo.core.db import StudyRecord, session_scope
from hpo.core.errors import SpecError
from hpo.core.factory import suggest_params
from hpo.core.files import NotRegularFile
from hpo.core.gguf import BadGGUF
from hpo.core.optuna_tables import study_id, trial_id
from hpo.core.paths import check_spec_paths
from hpo.core.progress import beats, best_trial
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from hpo.core.storage import HeartbeatStorage
from worker import generation
from worker.callbacks import WorkerShutdown
from worker.continuation import run_segment
from worker.data import DataCache, Splits
from worker.deadline import Overrun
from worker.liveness import STALLED, TrialStalled
from worker.locks import StudyLock
from worker.memory import RESOURCES, out_of_memory
from worker.models import AdapterCache, LoadedModel, ModelCache
from worker.trainer import trial_hparams
from worker.training import GENERATION_BATCH, TrainResult, TrialHooks, detach, train_trial
from worker.yielding import YieldCheck

MAX_ERROR_CHARS = 2000
log = logging.getLogger("hpo.worker")


@dataclass
class WorkerContext:
    """What a worker process keeps between trials."""

    settings: Settings
    device: torch.device
    worker_id: str
    hostname: str
    models: ModelCache
    data: DataCache
    adapters: AdapterCache
    storage: HeartbeatStorage
    sessions: sessionmaker[Session]
    stop: threading.Event = field(default_factory=threading.Event)

    def event(self, event: str, **fields: Any) -> None:
        """One JSON line per event in the worker's log, for people and log pipelines."""
        log.info(json.dumps({"event": event, "worker": self.worker_id, **fields}, default=str))


def fail_reason(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "oom"
    if isinstance(exc, WorkerShutdown):
        return "shutdown"
    if isinstance(exc, TrialStalled):
        return STALLED
    if isinstance(exc, Overrun):
        return "deadline"
    if isinstance(exc, NotRegularFile | BadGGUF | SpecError):
        return "input"  # the tenant's files: another try would meet them again
    if out_of_memory(exc):
        return RESOURCES  # past the trial process's memory limit (worker.memory)
    return "error"


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS


def _store(
    ctx: WorkerContext, trial: optuna.Trial, record: StudyRecord, kind: str, folder: Path
) -> None:
    """Keep a folder of the trial in the artifact store; never fail the trial over it."""
    try:
        with session_scope(ctx.sessions) as session:
            artifacts.save_folder(
                ctx.settings, session, study_id=record.id, trial=trial, folder=folder, kind=kind
            )
    except Exception as exc:  # a full disk must not cost the trial its result
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        records.set_artifact_error(trial, kind, error)
        ctx.event(f"{kind}_error", study=record.name, trial=trial.number, error=error)


def _adapter_keeper(
    ctx: WorkerContext, trial: optuna.Trial, record: StudyRecord, task: str
) -> Callable[[float, PeftModel], None]:
    """Save the adapter when the trial beats or ties the study's best so far (so the best
    trial always has one). A classification adapter carries the base config with the label
    names, so its predictions are named."""

    def keep(value: float, model: PeftModel) -> None:
        sid = study_id(trial.study)
        best = best_trial(ctx.storage, sid)
        minimize = ctx.storage.get_study_directions(sid)[0] == StudyDirection.MINIMIZE
        if (
            best is not None
            and best.value is not None
            and beats(best.value, value, minimize=minimize)
        ):
            return
        with tempfile.TemporaryDirectory(prefix="hpo-adapter-") as tmp:
            model.save_pretrained(tmp)
            if task == "sequence-classification":
                model.config.save_pretrained(tmp)
            _store(ctx, trial, record, artifacts.ADAPTER, Path(tmp))

    return keep


ExtraCallbacks = Callable[[dict[str, Any]], list[TrainerCallback]]


class ObjectiveFactory(Protocol):
    """Builds a trial's objective for a study; ``on_start`` must run once the trial is
    RUNNING."""

    def __call__(
        self,
        ctx: WorkerContext,
        spec: StudySpec,
        *,
        record: StudyRecord,
        on_start: Callable[[optuna.Trial], None],
    ) -> Callable[[optuna.Trial], float]: ...


def _record_result(trial: optuna.Trial, result: TrainResult) -> None:
    records.record_progress(
        trial,
        train_seconds=result.train_seconds,
        eval_seconds=result.eval_seconds,
        examples_seen=result.examples_seen,
        examples_trained=result.examples_trained,
        tokens_seen=result.tokens_seen,
    )
    records.set_final_train_loss(trial, result.train_loss)
    if result.generation_seconds is not None:
        records.set_generation_seconds(trial, result.generation_seconds)
    records.record_scores(trial, result.metrics)
    for metric, value in result.baseline.items():  # the same for every trial of the study
        records.set_baseline(trial.study, metric, value)


def make_objective(
    ctx: WorkerContext,
    spec: StudySpec,
    *,
    record: StudyRecord,
    on_start: Callable[[optuna.Trial], None],
    extra_callbacks: ExtraCallbacks = lambda params: [],
) -> Callable[[optuna.Trial], float]:
    """The objective for ``spec``; ``on_start`` runs once the trial is RUNNING.

    ``extra_callbacks(params)`` adds Trainer callbacks to a trial (tests inject faults here).
    """

    def objective(trial: optuna.Trial) -> float:
        on_start(trial)
        started = time.perf_counter()
        with _proposing(ctx, record, spec):
            params = {} if records.is_greedy(trial) else suggest_params(trial, spec.search)
        _record_placement(ctx, trial)
        try:
            return _run(ctx, trial, spec, record, params, extra_callbacks, started)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            records.record_failure(trial, reason=fail_reason(exc), error=error)
            raise
        finally:
            _record_cost(ctx, trial, started)

    return objective


def _run(
    ctx: WorkerContext,
    trial: optuna.Trial,
    spec: StudySpec,
    record: StudyRecord,
    params: dict[str, Any],
    extra_callbacks: ExtraCallbacks,
    started: float,
) -> float:
    """The trial's value: a decoding trial's score, or a training segment's result."""
    check_spec_paths(spec, ctx.settings)  # the worker's own roots, not just the API's
    raw = ctx.data.raw(spec.train.dataset, spec.train.model)
    loaded = ctx.models.get(spec.train.model, label_names=raw.label_names)
    hparams = trial_hparams(spec, params)
    if spec.train.mode == "decode":
        return decode_trial(ctx, trial, spec, record, hparams, loaded, raw)
    hooks = TrialHooks(
        extra_callbacks=extra_callbacks(params),
        keep_adapter=_adapter_keeper(ctx, trial, record, spec.train.model.task),
        keep_logs=lambda logs: _store(ctx, trial, record, artifacts.TENSORBOARD, logs),
        # setup = everything before the first training step: model, data, adapter, Trainer
        on_train_begin=lambda: records.set_setup_seconds(trial, time.perf_counter() - started),
        baseline_needed=records.continues(trial) is None
        and not records.has_baseline(trial.study.user_attrs),
        should_yield=YieldCheck(
            ctx.storage.engine, ctx.settings, record=record, trial_id=trial_id(trial)
        ),
        max_seconds=budget.trial_seconds(spec, ctx.settings),
    )
    train = functools.partial(
        train_trial,
        spec=spec,
        loaded=loaded,
        raw=raw,
        cache=ctx.data,
        device=ctx.device,
        stop=ctx.stop,
    )
    result = run_segment(ctx, record, trial, spec, hparams=hparams, hooks=hooks, train=train)
    _record_result(trial, result)
    records.record_tie_break(trial, spec.search.objective.tie_break, result.metrics)
    return result.value


def _record_placement(ctx: WorkerContext, trial: optuna.Trial) -> None:
    """Where the trial runs; its peak memory is counted from here."""
    records.record_worker(
        trial, worker=ctx.worker_id, hostname=ctx.hostname, device=str(ctx.device)
    )
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)


def _record_cost(ctx: WorkerContext, trial: optuna.Trial, started: float) -> None:
    """What the trial cost, whatever its outcome: device time and peak memory."""
    records.record_device_time(
        trial,
        time.perf_counter() - started,
        gpu=ctx.device.type == "cuda",
        peak_memory_mb=_peak_memory_mb(ctx.device),
    )


def _proposing(
    ctx: WorkerContext, record: StudyRecord, spec: StudySpec
) -> AbstractContextManager[object]:
    """GP proposals one at a time per study. A GP conditions on the params of running trials,
    but two workers fitting at once see neither's and propose the optimum of one acquisition
    function twice (tests/system/test_samplers_multiworker.py caught it). Other samplers draw
    per worker from their own seeds."""
    if spec.search.sampler.type != "gp":
        return nullcontext()
    return StudyLock(ctx.storage.engine, record.id)


def decode_trial(
    ctx: WorkerContext,
    trial: optuna.Trial,
    spec: StudySpec,
    record: StudyRecord,
    hparams: dict[str, Any],
    loaded: LoadedModel,
    raw: Splits,
) -> float:
    """Generate with the trial's decoding hparams on the evaluation prompts and score the
    answers; nothing is trained. The study's adapter (if any) is fetched once per worker."""
    model: Any = loaded.model
    greedy = records.is_greedy(trial)
    if greedy:  # even where the study fixes a sampling setting
        hparams = hparams | dict.fromkeys(generation.SAMPLING)
    if record.adapter_artifact_id is not None:
        folder = ctx.adapters.folder(record.adapter_artifact_id)
        model = PeftModel.from_pretrained(loaded.model, str(folder))
    try:
        objective = spec.search.objective
        chosen = generation.examples(
            raw.eval, raw.shape, spec.train.evaluation.generation.max_examples
        )
        scored = generation.score(
            model,
            loaded.tokenizer,
            chosen,
            metric=objective.metric,
            pattern=objective.pattern,
            config=generation.decoding(hparams, loaded.tokenizer),
            batch_size=GENERATION_BATCH,
            max_prompt_tokens=hparams["max_seq_length"],
            render_timeout=ctx.settings.prepare_timeout,
        )
    finally:
        if model is not loaded.model:
            detach(model)  # the cached base model stays as it was
    records.set_generation_seconds(trial, scored.seconds)
    records.set_sample_answer(trial, scored.predictions[0] if scored.predictions else "")
    if greedy:  # the study's baseline
        records.set_baseline(trial.study, objective.metric, scored.value)
    return scored.value
