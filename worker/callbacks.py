"""Trainer callbacks: report on the common fidelity axis, prune, stop on NaN or shutdown."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hpo.core import records
from worker import liveness


class WorkerShutdown(Exception):
    """The worker was asked to stop (SIGTERM/SIGINT) before its trial could pause; the trial
    is re-queued."""


INTERRUPTED = "interrupted: its worker was stopped"


@dataclass(frozen=True)
class Interruptions:
    """What may end a segment before its pruner or its end does.

    Attributes:
        stop: The worker is shutting down: a segment that can yield pauses at the next step
            (its state kept), any other raises ``WorkerShutdown`` there.
        deadline: ``time.monotonic()`` past which the trial stops, pruned, at its next step
            (the study's ``max_trial_s`` within the operator's).
        should_yield: Asked at each report: why the segment gives its worker up now (another
            owner's fair share, its study paused or stopped), or None. It then pauses there,
            its state kept, and a queued continuation carries it on.
    """

    stop: threading.Event
    deadline: float | None = None
    should_yield: Callable[[], str | None] | None = None


class Diverged(optuna.TrialPruned):
    """Training diverged (a NaN/inf loss, or one far above where it started): pruned, with
    ``prune_reason`` saying which, so it neither looks like a result nor hides among them."""


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
        interruptions: Interruptions,
        divergence_factor: float | None = None,
        on_train_begin: Callable[[], None] | None = None,
        score: Callable[[dict[str, float]], float] | None = None,
        reports: bool = True,
        until: int | None = None,
        resumed: dict[int, float] | None = None,
        initial_loss: float | None = None,
    ) -> None:
        """``score`` turns an evaluation's metrics into the objective's value (default: the
        metric itself); with ``reports`` off nothing is evaluated or reported mid-training.

        A segment stops at its first report at or after ``until`` examples, with a checkpoint
        saved (``paused_at`` says where); one that continues another starts from its reports
        (``resumed``) and its starting loss (``initial_loss``)."""
        self.trial = trial
        self.score = score or (lambda metrics: metrics[metric])
        self.reports = reports
        self._silenced = False
        self.eval_seconds = 0.0
        self._eval_started: float | None = None
        self.last_metrics: dict[str, float] = {}
        self.divergence_factor = divergence_factor
        # The loss of the first batch, before any update (``logging_first_step``).
        self.initial_loss = initial_loss
        self.on_begin = on_train_begin
        self.metric = metric
        self.every = every_examples
        self.per_step = examples_per_step
        self.max_examples = max_examples
        self.interruptions = interruptions
        self.pending: int | None = None
        self.reported: dict[int, float] = dict(resumed or {})
        self.loss_curve: dict[str, float] = {}
        self.last_value: float | None = None
        self.until = until
        self.paused_at: int | None = None
        self.yielded: str | None = None  # why it paused before its ``until``
        self.start_examples = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self.start_examples = self.examples_seen(state)  # past the resumed part, if any
        if self.on_begin is not None:
            self.on_begin()

    def examples_seen(self, state: TrainerState) -> int:
        return min(state.global_step * self.per_step, self.max_examples)

    def trained(self, state: TrainerState) -> int:
        return self.examples_seen(state) - self.start_examples

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        interruptions = self.interruptions
        if interruptions.stop.is_set():
            if interruptions.should_yield is None or self.paused_at is not None:
                raise WorkerShutdown("worker shutting down")
            # A segment that can pause keeps this step's state, so the configuration
            # continues from here on the next worker: nothing trained is lost.
            self.yielded = INTERRUPTED
            self._pause(self.examples_seen(state), control)
            return
        if interruptions.deadline is not None and time.monotonic() > interruptions.deadline:
            reason = (
                f"time: the trial's time limit ran out after {self.examples_seen(state)} examples"
            )
            records.set_prune_reason(self.trial, reason)
            raise optuna.TrialPruned(reason)
        if not self.reports:
            return
        point = (self.examples_seen(state) // self.every) * self.every
        if point > 0 and point not in self.reported and point != self.pending:
            self.pending = point
            control.should_evaluate = True
            self._eval_started = time.perf_counter()

    @contextmanager
    def silenced(self) -> Iterator[None]:
        """Evaluations inside the block (baseline, test) are not the trial's reports."""
        self._silenced = True
        try:
            yield
        finally:
            self._silenced = False

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **_: Any,
    ) -> None:
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        if self.initial_loss is None and math.isfinite(loss):
            self.initial_loss = loss
            records.set_initial_train_loss(self.trial, loss)  # continuations compare with it
        self._check_divergence(loss, state, what="training loss")

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **_: Any,
    ) -> None:
        if self._silenced:
            return
        if self._eval_started is not None:
            self.eval_seconds += time.perf_counter() - self._eval_started
            self._eval_started = None
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        loss = metrics.get("eval_loss")
        if loss is not None:
            self._check_divergence(loss, state, what="eval_loss")
        if self.metric.startswith("eval_") and self.metric not in metrics:
            raise KeyError(f"evaluation produced no {self.metric!r}; it gave {sorted(metrics)}")
        value = self.score(metrics)
        step = self.pending if self.pending is not None else self.examples_seen(state)
        final = self.pending is None
        self.pending = None
        self.last_value, self.last_metrics = value, metrics
        if step in self.reported:
            return
        self.reported[step] = value
        self.trial.report(value, step)
        if loss is not None:  # the loss curve beside a generation objective's scores
            self.loss_curve[str(step)] = loss
            records.set_eval_loss_curve(self.trial, self.loss_curve)
        # Training that ends here anyway has its result: neither pruned nor paused.
        if final or self.examples_seen(state) >= self.max_examples:
            return
        if self.trial.should_prune():
            reason = f"pruner: {self.metric}={value:.4g} at {step} examples"
            records.set_prune_reason(self.trial, reason)
            raise optuna.TrialPruned(reason)
        if self.until is not None and step >= self.until:
            self._pause(step, control)
        elif self.interruptions.should_yield is not None:
            self.yielded = self.interruptions.should_yield()
            if self.yielded is not None:
                self._pause(step, control)

    def _pause(self, step: int, control: TrainerControl) -> None:
        self.paused_at = step
        control.should_save = True  # Trainer saves the full state right after this
        control.should_training_stop = True

    def _check_divergence(self, value: float, state: TrainerState, *, what: str) -> None:
        seen = self.examples_seen(state)
        if not math.isfinite(value):
            reason = f"non_finite_loss: {what} became {value} after {seen} examples"
        elif (
            self.divergence_factor is not None
            and self.initial_loss is not None
            and value > self.divergence_factor * self.initial_loss
        ):
            reason = (
                f"diverged: {what} {value:.4g} after {seen} examples is more than "
                f"{self.divergence_factor:g}x the starting loss {self.initial_loss:.4g}"
            )
        else:
            return
        records.set_prune_reason(self.trial, reason)
        raise Diverged(reason)


class ProgressCallback(TrainerCallback):
    """A Trainer's steps, evaluation batches and saves are a trial's progress
    (``worker.liveness``)."""

    def on_train_begin(self, *_: Any, **__: Any) -> None:
        liveness.progress()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, *_: Any, **__: Any
    ) -> None:
        liveness.progress(step=state.global_step, total=state.max_steps)

    on_substep_end = on_prediction_step = on_save = on_train_begin


def scores(metrics: dict[str, Any]) -> dict[str, float]:
    """Scores from HF's evaluation metrics (not its runtime figures)."""
    keep = ("_loss", "_accuracy")
    return {k: float(v) for k, v in metrics.items() if k.endswith(keep)}
