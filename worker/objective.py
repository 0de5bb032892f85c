"""The Optuna objective a worker runs: one trial, its records, and how it may fail."""

from __future__ import annotations

import json
import logging
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
import torch
from optuna.study import StudyDirection
from peft import PeftModel
from sqlalchemy.orm import Session, sessionmaker
from transformers import TrainerCallback

from hpo.core import artifacts
from hpo.core.budget import DEVICE_SECONDS_ATTR
from hpo.core.db import session_scope
from hpo.core.factory import suggest_params
from hpo.core.optuna_tables import study_id
from hpo.core.paths import check_spec_paths
from hpo.core.progress import beats, best_trial
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from hpo.core.storage import FAIL_REASON_ATTR, HeartbeatStorage
from worker.callbacks import WorkerShutdown
from worker.data import DataCache
from worker.models import ModelCache
from worker.training import train_trial, trial_settings

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
    return "error"


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS


def _adapter_keeper(
    ctx: WorkerContext, spec: StudySpec, trial: optuna.Trial, *, record_id: int
) -> Callable[[float, PeftModel], None]:
    """Save the adapter when the trial beats or ties the study's best so far (so the best
    trial always has one); never fail the trial over it."""

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
        try:
            with (
                tempfile.TemporaryDirectory(prefix="hpo-adapter-") as tmp,
                session_scope(ctx.sessions) as session,
            ):
                model.save_pretrained(tmp)
                artifacts.save_adapter(
                    ctx.settings, session, study_id=record_id, trial=trial, adapter_dir=Path(tmp)
                )
        except Exception as exc:  # a full disk must not cost the trial its result
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            trial.set_user_attr("adapter_error", error)
            ctx.event("adapter_error", study=spec.name, trial=trial.number, error=error)

    return keep


ExtraCallbacks = Callable[[dict[str, Any]], list[TrainerCallback]]


class ObjectiveFactory(Protocol):
    """Builds a trial's objective for our study row ``record_id``; ``on_start`` must run once
    the trial is RUNNING."""

    def __call__(
        self,
        ctx: WorkerContext,
        spec: StudySpec,
        *,
        record_id: int,
        on_start: Callable[[optuna.Trial], None],
    ) -> Callable[[optuna.Trial], float]: ...


def make_objective(
    ctx: WorkerContext,
    spec: StudySpec,
    *,
    record_id: int,
    on_start: Callable[[optuna.Trial], None],
    extra_callbacks: ExtraCallbacks = lambda params: [],
) -> Callable[[optuna.Trial], float]:
    """The objective for ``spec``; ``on_start`` runs once the trial is RUNNING.

    ``extra_callbacks(params)`` adds Trainer callbacks to a trial (tests inject faults here).
    """

    def objective(trial: optuna.Trial) -> float:
        on_start(trial)
        started = time.perf_counter()
        params = suggest_params(trial, spec.search)
        for key, value in {
            "worker": ctx.worker_id,
            "hostname": ctx.hostname,
            "device": str(ctx.device),
        }.items():
            trial.set_user_attr(key, value)
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        try:
            check_spec_paths(spec, ctx.settings)  # the worker's own roots, not just the API's
            raw = ctx.data.raw(spec.train.dataset, spec.train.model)
            loaded = ctx.models.get(spec.train.model, num_labels=raw.num_labels)
            settings = trial_settings(spec, params)
            splits = ctx.data.tokenized(
                spec.train.dataset,
                spec.train.model,
                loaded.tokenizer,
                loaded.path,
                settings["max_seq_length"],
            )
            result = train_trial(
                trial,
                spec=spec,
                settings=settings,
                loaded=loaded,
                splits=splits,
                device=ctx.device,
                stop=ctx.stop,
                extra_callbacks=extra_callbacks(params),
                keep_adapter=_adapter_keeper(ctx, spec, trial, record_id=record_id),
                # setup = everything before the first training step: model, data, adapter,
                # Trainer construction
                on_train_begin=lambda: trial.set_user_attr(
                    "setup_seconds", round(time.perf_counter() - started, 4)
                ),
            )
            trial.set_user_attr("train_seconds", round(result.train_seconds, 4))
            trial.set_user_attr("examples_seen", result.examples_seen)
            trial.set_user_attr("tokens_seen", result.tokens_seen)
            trial.set_user_attr("final_train_loss", result.train_loss)
            return result.value
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr(FAIL_REASON_ATTR, fail_reason(exc))
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
            raise
        finally:
            seconds = round(time.perf_counter() - started, 4)
            trial.set_user_attr(DEVICE_SECONDS_ATTR, seconds)
            if ctx.device.type == "cuda":
                trial.set_user_attr("gpu_seconds", seconds)
            trial.set_user_attr("peak_memory_mb", round(_peak_memory_mb(ctx.device), 1))

    return objective
