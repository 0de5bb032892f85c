"""``hpo run``'s live view: the budget line, and per running trial its configuration in
short, the step it reached of how many, its last reported value, elapsed time and ETA.

The steps come from the workers' progress pipes (``worker.liveness.Report`` lines, the ones a
supervisor reads), everything else from the database.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from hpo.core.optuna_tables import trial_id
from hpo.core.tally import Tally

MAX_LINE_BYTES = 4096  # a report is one short JSON line; anything longer is not one


@dataclass
class Steps:
    """How far one trial's training got: ``step`` of ``total`` now, and where the rate is
    measured from (the first step seen, when)."""

    step: int
    total: int | None
    first_step: int
    first_at: float
    at: float

    def eta(self) -> float | None:
        """Seconds left at the rate since the first step seen; None until it can tell."""
        if self.total is None or self.step <= self.first_step:
            return None
        rate = (self.at - self.first_at) / (self.step - self.first_step)
        return rate * max(self.total - self.step, 0)


class ProgressPipes:
    """Read the workers' progress pipes in threads: each trial's latest ``Steps``, by Optuna's
    trial id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: dict[int, Steps] = {}

    def follow(self, read_fd: int) -> None:
        """Read ``read_fd`` until its writer closes it (the worker exited)."""
        thread = threading.Thread(target=self._read, args=(read_fd,), daemon=True)
        thread.start()

    def steps(self, trial_id: int) -> Steps | None:
        with self._lock:
            return self._steps.get(trial_id)

    def _read(self, read_fd: int) -> None:
        from worker.liveness import Report  # no torch: the report's format only

        with os.fdopen(read_fd, "rb") as pipe:
            for line in iter(lambda: pipe.readline(MAX_LINE_BYTES), b""):
                report = Report.decode(line)
                if report is not None and report.trial is not None and report.step is not None:
                    self._note(report.trial, report.step, report.total)

    def _note(self, trial_id: int, step: int, total: int | None) -> None:
        now = time.monotonic()
        with self._lock:
            seen = self._steps.get(trial_id)
            if seen is None or step < seen.step:  # a new trial, or one that started again
                self._steps[trial_id] = Steps(step, total, step, now, now)
            else:
                seen.step, seen.total, seen.at = step, total, now


def short_configuration(params: dict[str, Any]) -> str:
    """``lr 3.9e-04, lora_r 8``: each searched value, names of several words by initials."""
    names = {key: _initials(key) for key in params}
    clashing = {n for n in names.values() if list(names.values()).count(n) > 1}
    return ", ".join(
        f"{key if names[key] in clashing else names[key]} {_value(value)}"
        for key, value in params.items()
    )


def _initials(key: str) -> str:
    parts = key.split("_")
    return "".join(p[0] for p in parts if p) if len(parts) > 2 or key == "learning_rate" else key


def _value(value: Any) -> str:
    return f"{value:.2g}" if isinstance(value, float) else str(value)


def _seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def running_table(trials: Sequence[FrozenTrial], metric: str, pipes: ProgressPipes) -> Table:
    """One row per running trial."""
    table = Table(box=box.SIMPLE_HEAD, collapse_padding=True, show_edge=False, pad_edge=False)
    for header, justify in (
        ("#", "right"),
        ("configuration", "left"),
        ("step", "right"),
        (metric, "right"),
        ("elapsed", "right"),
        ("ETA", "right"),
    ):
        # a header is never cut; a long configuration folds onto a second line
        table.add_column(header, justify=justify, no_wrap=header != "configuration")  # type: ignore[arg-type]
    now = dt.datetime.now()  # Optuna stamps trials with the local time, naive
    for trial in trials:
        steps = pipes.steps(trial_id(trial))  # Optuna's id: what a report names
        reports = trial.intermediate_values
        last = reports[max(reports)] if reports else None
        started = trial.datetime_start
        table.add_row(
            str(trial.number),
            short_configuration(trial.params),
            "setting up" if steps is None else f"{steps.step}/{steps.total or '?'}",
            "-" if last is None else f"{last:.4g}",
            _seconds((now - started).total_seconds() if started else None),
            _seconds(steps.eta() if steps else None),
        )
    return table


def progress_view(
    name: str,
    metric: str,
    tally: Tally,
    trials: Sequence[FrozenTrial],
    best: float | None,
    *,
    elapsed: float,
    alive: int,
    workers: int,
    pipes: ProgressPipes,
) -> RenderableType:
    """The budget line, the counts, and the running trials' table."""
    best_label = "best loss" if metric == "eval_loss" else f"best {metric}"
    best_text = "-" if best is None else f"{best:.4f}"
    # the study's name alone on its line: a long one cannot push the figures off theirs
    budget = (
        f"{tally.budget_line()} · {best_label} {best_text} · "
        f"workers {alive}/{workers} · {_seconds(elapsed)}"
    )
    lines: list[RenderableType] = [
        Text(f"study {name}", style="bold"),
        Text(budget, style="bold"),
        Text(tally.detail_line()),
    ]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if running:
        lines.append(running_table(running, metric, pipes))
    elif alive and not tally.segments:
        # until a worker has imported torch and built the model and data, nothing runs
        lines.append(Text("workers starting: importing torch, building the model and the data"))
    return Group(*lines)
