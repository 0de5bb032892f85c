"""A real worker process for tests, with faults or a cheap objective injected through the
worker's ``objective_factory`` seam (never through production settings).

    python -m tests.worker_process [--inject-oom JSON] [--cheap] [--slow-steps S]
                                   [--record-state DIR] [--idle-exit S] [--study NAME]
                                   [--stall-when JSON --stall gil|python] [--supervised]

Settings come from the environment (``HPO_*``), as for ``hpo worker``. ``--supervised`` runs
it as ``hpo worker`` runs its children: under the supervisor, one child.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from peft import get_peft_model_state_dict
from transformers import TrainerCallback

from hpo.cli import log_to_stderr
from hpo.core.db import StudyRecord
from hpo.core.factory import optuna_distributions, suggest_params
from hpo.core.records import PAUSED_AT_ATTR
from hpo.core.schedulers.dispatch import Segment
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from worker import liveness
from worker.loop import Worker
from worker.objective import ExtraCallbacks, WorkerContext, make_objective
from worker.supervisor import PROGRESS_FD_OPTION, Child, Supervisor

# Stalls a hostile spec can cause: C code that holds the GIL (``re`` on a catastrophic
# pattern: the heartbeat and every Python signal handler stop too), or Python blocked without
# progress (a read of a FIFO, a template loop) while the heartbeat goes on.
STALLS: dict[str, Callable[[], object]] = {
    "gil": lambda: re.fullmatch("(a+)+b", "a" * 40),
    "python": lambda: threading.Event().wait(),
}


class RaiseOOM(TrainerCallback):
    """A CUDA out-of-memory error on the first training step, as a too-large batch gives."""

    def on_step_begin(self, *_: Any, **__: Any) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by a test)")


class SlowSteps(TrainerCallback):
    """Every training step takes ``seconds`` longer: a test has time to kill a segment."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, *_: Any, **__: Any) -> None:
        time.sleep(self.seconds)


class RecordState(TrainerCallback):
    """At the start of training (after a resume has loaded its state), save the adapter
    weights, the optimizer state and its hyperparameters to ``folder``, by trial folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        optimizer: Any = None,
        **_: Any,
    ) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        trial = Path(args.output_dir).name.split("-")[1]  # hpo-trial<N>-<random>
        torch.save(
            {
                "adapter": {k: v.clone() for k, v in get_peft_model_state_dict(model).items()},
                "optimizer": optimizer.state_dict(),
                "global_step": state.global_step,
            },
            self.folder / f"{trial}.pt",
        )


def oom_when(match: dict[str, Any]) -> ExtraCallbacks:
    """Trials whose params contain ``match`` run out of memory."""

    def callbacks(params: dict[str, Any]) -> list[TrainerCallback]:
        return [RaiseOOM()] if all(params.get(k) == v for k, v in match.items()) else []

    return callbacks


def _unit(dist: BaseDistribution, value: Any) -> float:
    """Where ``value`` lies in its distribution, from 0 to 1 (log scale where it is log)."""
    if isinstance(dist, CategoricalDistribution):
        return dist.to_internal_repr(value) / max(1, len(dist.choices) - 1)
    assert isinstance(dist, FloatDistribution | IntDistribution)
    scale = math.log if dist.log else float
    return (scale(value) - scale(dist.low)) / (scale(dist.high) - scale(dist.low))


def _wait_for_workers(trial: optuna.Trial, n: int, *, timeout: float = 120.0) -> None:
    """Block until ``n`` distinct workers have started a trial of this study."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = {t.user_attrs.get("worker") for t in trial.study.get_trials(deepcopy=False)}
        if len(seen - {None}) >= n:
            return
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {n} workers started a trial within {timeout}s")


def cheap_objective(
    ctx: WorkerContext,
    spec: StudySpec,
    *,
    record: StudyRecord,
    on_start: Callable[[optuna.Trial], None],
    barrier: int = 0,
) -> Callable[[optuna.Trial], float]:
    """No training: a smooth bowl over the space's unit cube (optimum inside), reported at
    three fidelities, pausing and continuing as a scheduler says. With ``barrier``, each
    worker's first trial waits until that many workers are in, so a test can rely on them
    sampling side by side."""
    distributions = optuna_distributions(spec.search)
    waited: list[bool] = []

    def objective(trial: optuna.Trial) -> float:
        on_start(trial)
        params = suggest_params(trial, spec.search)
        trial.set_user_attr("worker", ctx.worker_id)
        if barrier and not waited:
            _wait_for_workers(trial, barrier)
            waited.append(True)
        value = sum((_unit(distributions[k], v) - 0.37) ** 2 for k, v in params.items())
        first = 1
        segment = Segment.of(trial.user_attrs)
        if segment.continues is not None:  # a scheduler's continuation: the curve goes on
            parent = trial.study.get_trials(deepcopy=False)[segment.continues]
            for step, earlier in parent.intermediate_values.items():
                trial.report(earlier, step)
            first = max(parent.intermediate_values) + 1
        for step in range(first, 4):
            trial.report(value + 1 / step, step)
            if segment.until is not None and segment.until <= step < 3:
                trial.set_user_attr(PAUSED_AT_ATTR, segment.until)
                raise optuna.TrialPruned(f"paused at {step}")
        return value

    return objective


def stalling_objective(
    ctx: WorkerContext,
    spec: StudySpec,
    *,
    record: StudyRecord,
    on_start: Callable[[optuna.Trial], None],
    when: dict[str, Any],
    how: str,
) -> Callable[[optuna.Trial], float]:
    """The cheap objective, except that a trial whose params contain ``when`` makes progress
    once (a training step) and then stalls ``how``."""
    cheap = cheap_objective(ctx, spec, record=record, on_start=lambda trial: None)

    def objective(trial: optuna.Trial) -> float:
        on_start(trial)
        params = suggest_params(trial, spec.search)
        if all(params.get(k) == v for k, v in when.items()):
            trial.set_user_attr("worker", ctx.worker_id)
            liveness.progress()
            STALLS[how]()
        return cheap(trial)

    return objective


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--study", action="append")
    parser.add_argument("--idle-exit", type=float)
    parser.add_argument("--max-trials", type=int)
    parser.add_argument("--inject-oom", type=json.loads)
    parser.add_argument("--cheap", action="store_true")
    parser.add_argument("--barrier", type=int, default=0)
    parser.add_argument("--slow-steps", type=float)
    parser.add_argument("--record-state", type=Path)
    parser.add_argument("--stall-when", type=json.loads)
    parser.add_argument("--stall", choices=sorted(STALLS), default="gil")
    parser.add_argument("--supervised", action="store_true")
    parser.add_argument(PROGRESS_FD_OPTION, type=int)
    args = parser.parse_args(argv)
    log_to_stderr()
    if args.supervised:
        argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--supervised"]
        child = Child("cpu0", (sys.executable, "-m", "tests.worker_process", *argv), {})
        Supervisor.for_settings([child], Settings()).run()
        return 0
    factory: Any = make_objective
    if args.stall_when:
        factory = functools.partial(stalling_objective, when=args.stall_when, how=args.stall)
    elif args.cheap:
        factory = functools.partial(cheap_objective, barrier=args.barrier)
    elif args.inject_oom:
        factory = functools.partial(make_objective, extra_callbacks=oom_when(args.inject_oom))
    elif args.slow_steps or args.record_state:
        injected = [
            *([SlowSteps(args.slow_steps)] if args.slow_steps else []),
            *([RecordState(args.record_state)] if args.record_state else []),
        ]
        factory = functools.partial(make_objective, extra_callbacks=lambda params: injected)
    Worker(
        Settings(),
        studies=args.study,
        idle_exit=args.idle_exit,
        max_trials=args.max_trials,
        cpu_threads=1,
        objective_factory=factory,
        report_fd=args.progress_fd,
    ).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
