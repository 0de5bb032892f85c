"""The Optuna objective a worker runs: one trial, its records, and how it may fail."""

from __future__ import annotations

import json
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
from peft import PeftModel

from hpo import artifacts
from hpo.factory import suggest_params
from hpo.paths import check_spec_paths
from hpo.progress import best_trial
from hpo.settings import Settings
from hpo.spec import StudySpec
from worker.callbacks import InjectOOM, WorkerShutdown
from worker.data import DataCache
from worker.models import ModelCache
from worker.training import train_trial, trial_settings

MAX_ERROR_CHARS = 2000


@dataclass
class WorkerContext:
    """What a worker process keeps between trials."""

    settings: Settings
    device: torch.device
    worker_id: str
    hostname: str
    models: ModelCache
    data: DataCache
    stop: threading.Event = field(default_factory=threading.Event)


def fail_reason(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "oom"
    if isinstance(exc, WorkerShutdown):
        return "shutdown"
    return "error"


def _inject_oom(settings: Settings, params: dict[str, Any]) -> bool:
    if not settings.inject_oom:
        return False
    target = json.loads(settings.inject_oom)
    return all(params.get(k) == v for k, v in target.items())


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS


def _adapter_keeper(
    ctx: WorkerContext, spec: StudySpec, trial: optuna.Trial
) -> Callable[[float, PeftModel], None]:
    """Save the adapter when the trial beats the study's best so far; never fail the trial."""

    def keep(value: float, model: PeftModel) -> None:
        best = best_trial(trial.storage, trial.study._study_id)  # noqa: SLF001
        if best is not None and best.value is not None:
            better = (
                value < best.value
                if spec.objective.direction == "minimize"
                else value > best.value
            )
            if not better:
                return
        try:
            with tempfile.TemporaryDirectory(prefix="hpo-adapter-") as tmp:
                model.save_pretrained(tmp)
                artifacts.save_adapter(ctx.settings, trial, Path(tmp))
        except Exception as exc:  # a full disk must not cost the trial its result
            trial.set_user_attr("adapter_error", f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])

    return keep


class ObjectiveFactory(Protocol):
    """Builds a trial's objective; ``on_start`` must run once the trial is RUNNING."""

    def __call__(
        self, ctx: WorkerContext, spec: StudySpec, *, on_start: Callable[[optuna.Trial], None]
    ) -> Callable[[optuna.Trial], float]: ...


def make_objective(
    ctx: WorkerContext, spec: StudySpec, *, on_start: Callable[[optuna.Trial], None]
) -> Callable[[optuna.Trial], float]:
    """The objective for ``spec``; ``on_start`` runs once the trial is RUNNING."""

    def objective(trial: optuna.Trial) -> float:
        on_start(trial)
        started = time.perf_counter()
        params = suggest_params(trial, spec)
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
            raw = ctx.data.raw(spec.dataset, spec.model)
            loaded = ctx.models.get(spec.model, num_labels=raw.num_labels)
            settings = trial_settings(spec, params)
            splits = ctx.data.tokenized(
                spec.dataset, spec.model, loaded.tokenizer, loaded.path, settings["max_seq_length"]
            )
            result = train_trial(
                trial,
                spec=spec,
                settings=settings,
                loaded=loaded,
                splits=splits,
                device=ctx.device,
                stop=ctx.stop,
                extra_callbacks=[InjectOOM()] if _inject_oom(ctx.settings, params) else [],
                keep_adapter=_adapter_keeper(ctx, spec, trial),
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
            trial.set_user_attr("fail_reason", fail_reason(exc))
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
            raise
        finally:
            seconds = round(time.perf_counter() - started, 4)
            trial.set_user_attr("device_seconds", seconds)
            if ctx.device.type == "cuda":
                trial.set_user_attr("gpu_seconds", seconds)
            trial.set_user_attr("peak_memory_mb", round(_peak_memory_mb(ctx.device), 1))

    return objective
