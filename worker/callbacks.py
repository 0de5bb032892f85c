"""Trainer callbacks: report on the common fidelity axis, prune, stop on NaN or shutdown."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import optuna
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class WorkerShutdown(Exception):
    """The worker was asked to stop (SIGTERM/SIGINT); the trial is re-queued."""


class NonFiniteLoss(optuna.TrialPruned):
    """Training diverged (NaN/inf loss): the trial is pruned with this reason."""


class FidelityCallback(TrainerCallback):
    """Evaluate every ``every_examples`` training examples and report at that many examples.

    Reporting at a count of examples (not optimizer steps) puts trials with different batch
    sizes and accumulation on one axis, so pruners compare like with like.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        *,
        metric: str,
        every_examples: int,
        examples_per_step: int,
        max_examples: int,
        stop: threading.Event,
        on_train_begin: Callable[[], None] | None = None,
    ) -> None:
        self.trial = trial
        self.on_begin = on_train_begin
        self.metric = metric
        self.every = every_examples
        self.per_step = examples_per_step
        self.max_examples = max_examples
        self.stop = stop
        self.pending: int | None = None
        self.reported: dict[int, float] = {}
        self.last_value: float | None = None

    def on_train_begin(self, *_: Any, **__: Any) -> None:
        if self.on_begin is not None:
            self.on_begin()

    def examples_seen(self, state: TrainerState) -> int:
        return min(state.global_step * self.per_step, self.max_examples)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if self.stop.is_set():
            raise WorkerShutdown("worker shutting down")
        point = (self.examples_seen(state) // self.every) * self.every
        if point > 0 and point not in self.reported and point != self.pending:
            self.pending = point
            control.should_evaluate = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **_: Any,
    ) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self._diverged(loss, state)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **_: Any,
    ) -> None:
        metrics = metrics or {}
        if self.metric not in metrics:
            raise KeyError(f"evaluation produced no {self.metric!r}; it gave {sorted(metrics)}")
        value = float(metrics[self.metric])
        if not math.isfinite(value):
            self._diverged(value, state)
        step = self.pending if self.pending is not None else self.examples_seen(state)
        final = self.pending is None
        self.pending = None
        self.last_value = value
        if step in self.reported:
            return
        self.reported[step] = value
        self.trial.report(value, step)
        if not final and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at {step} examples with {self.metric}={value:.4g}")

    def _diverged(self, value: float, state: TrainerState) -> None:
        self.trial.set_user_attr("prune_reason", "non_finite_loss")
        raise NonFiniteLoss(f"loss became {value} after {self.examples_seen(state)} examples")


class InjectOOM(TrainerCallback):
    """Fault injection for tests: raise a CUDA out-of-memory error on the first step."""

    def on_step_begin(self, *_: Any, **__: Any) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by HPO_INJECT_OOM)")
