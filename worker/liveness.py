"""Liveness is progress, not a live process: a trial's phases, their deadlines, who acts.

A worker process keeps one ``Liveness``. Its trial is in a phase, ``setup`` (model, data,
tokenization: until the first training step or generated batch) and then ``run``, whose
timeout starts again at every sign of progress: a training step, an evaluation batch, a
generated batch (``progress()``, called from those loops). A heartbeat only says that the
process is alive; a trial stuck in a template, a FIFO or a regex keeps beating. Two checks
act on a missed deadline:

- in the process, a watchdog thread sends the main thread a signal whose handler raises
  ``TrialStalled``: a Python-level stall (a blocking read, a sleep, a Python loop) fails the
  trial as ``stalled``, and the worker goes on with the next one;
- outside it, the supervisor (``worker.supervisor``) hears of the progress through a pipe
  (``Report`` lines) and SIGKILLs a child that has reported none for the phase's timeout plus
  a margin: a stall that holds the GIL (C code such as ``re`` on a catastrophic pattern)
  stops the watchdog thread and every Python signal handler, but not a SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from types import FrameType

from hpo.core.settings import Settings
from worker.deadline import Overrun

SETUP, RUN, IDLE = "setup", "run", "idle"
STALLED = "stalled"
INTERRUPT = signal.SIGUSR1
# At most one report a second while a phase goes on: the supervisor's timeouts are minutes.
REPORT_EVERY_S = 1.0


class TrialStalled(Exception):
    """The trial showed no progress within its phase's timeout."""


class TrialOvertime(Overrun):
    """The trial ran past its time limit where it could not stop at a step (a decode trial,
    an evaluation): it fails with reason deadline."""


def phase_timeouts(settings: Settings) -> dict[str, float]:
    return {SETUP: settings.setup_timeout, RUN: settings.progress_timeout}


@dataclass(frozen=True)
class Report:
    """What a supervised worker tells its supervisor: its trial (Optuna's trial id), the phase
    and how long it may go without progress (None: no trial, no deadline); in training, the
    optimizer step it reached of how many (``hpo run``'s live table shows them)."""

    trial: int | None
    phase: str
    timeout: float | None
    step: int | None = None
    total: int | None = None

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Report | None:
        """None for anything but a well-formed report (the line came from a child process)."""
        try:
            fields = json.loads(line)
            report = cls(
                fields["trial"],
                str(fields["phase"]),
                fields["timeout"],
                fields.get("step"),
                fields.get("total"),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        counts = (report.trial, report.step, report.total)
        if not all(isinstance(n, int | None) for n in counts) or not isinstance(
            report.timeout, int | float | None
        ):
            return None
        return report


class Liveness:
    """One process's trial progress. ``report_fd``: the supervisor's pipe, if supervised."""

    def __init__(
        self,
        timeouts: Mapping[str, float],
        *,
        report_fd: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeouts = dict(timeouts)
        self.report_fd = report_fd
        self.clock = clock
        self.trial_id: int | None = None
        self.ends: float | None = None  # the trial's time limit, on ``clock``
        self.phase = IDLE
        self.step: int | None = None
        self.total: int | None = None
        self.last = clock()
        self._reported_at = float("-inf")
        self._fired = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._watchdog: threading.Thread | None = None
        if report_fd is not None:
            # A supervisor that lags must cost a report, never a blocked trial.
            os.set_blocking(report_fd, False)

    # --- what the trial says ----------------------------------------------------------------

    @contextmanager
    def trial(self, trial_id: int, max_seconds: float | None = None) -> Iterator[None]:
        """The trial's scope: ``setup`` from here, idle (no deadline) once it has ended; it is
        interrupted ``max_seconds`` after it began, whatever its progress."""
        self.ends = None if max_seconds is None else self.clock() + max_seconds
        self._enter(trial_id, SETUP)
        try:
            yield
        finally:
            self.ends = None
            self._enter(None, IDLE)

    def progress(
        self, phase: str = RUN, *, step: int | None = None, total: int | None = None
    ) -> None:
        """Progress in ``phase`` (ignored between trials); ``step`` of ``total``: how far
        training got, when the caller knows."""
        if self.phase == IDLE:
            return
        if step is not None:
            self.step, self.total = step, total
        self._enter(self.trial_id, phase)

    def overdue(self, now: float) -> float | None:
        """Seconds past the current phase's deadline, or None while it holds."""
        if self.ends is not None and self.phase != IDLE and now > self.ends:
            return now - self.ends
        timeout = self.timeouts.get(self.phase)
        if timeout is None or now - self.last <= timeout:
            return None
        return now - self.last - timeout

    def _enter(self, trial_id: int | None, phase: str) -> None:
        now = self.clock()
        with self._lock:
            changed = (trial_id, phase) != (self.trial_id, self.phase)
            if trial_id != self.trial_id:
                self.step = self.total = None
            self.trial_id, self.phase, self.last, self._fired = trial_id, phase, now, False
        if self.report_fd is not None and (changed or now - self._reported_at >= REPORT_EVERY_S):
            self._reported_at = now
            report = Report(trial_id, phase, self.timeouts.get(phase), self.step, self.total)
            # One write under PIPE_BUF: all of the line or nothing. OSError: the pipe is full
            # (the supervisor lags) or closed (it is gone).
            with contextlib.suppress(OSError):
                os.write(self.report_fd, report.encode())

    # --- the in-process check ---------------------------------------------------------------

    def watch(self) -> None:
        """Interrupt the main thread's stalled trial with ``TrialStalled``. Call it from the
        main thread (it installs a signal handler)."""
        signal.signal(INTERRUPT, self._on_interrupt)
        tick = min(1.0, min(self.timeouts.values()) / 4)
        main = threading.main_thread().ident
        assert main is not None

        def watchdog() -> None:
            while not self._closed.wait(tick):
                with self._lock:
                    due = not self._fired and self.overdue(self.clock()) is not None
                    self._fired = self._fired or due
                if due:  # a real signal: a blocking system call returns EINTR to the handler
                    signal.pthread_kill(main, INTERRUPT)

        self._watchdog = threading.Thread(target=watchdog, name="hpo-liveness", daemon=True)
        self._watchdog.start()

    def close(self) -> None:
        self._closed.set()
        if self._watchdog is not None:
            self._watchdog.join()
            signal.signal(INTERRUPT, signal.SIG_DFL)

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        now = self.clock()
        late = self.overdue(now)  # progress may have come since the watchdog looked
        if late is None:
            return
        if self.ends is not None and now > self.ends:
            raise TrialOvertime("the trial ran past its time limit (max_trial_s)")
        timeout = self.timeouts[self.phase]
        raise TrialStalled(f"no progress in phase {self.phase!r} within {timeout:g} s")


_current: Liveness | None = None


def use(liveness: Liveness | None) -> None:
    """Make ``liveness`` the one ``progress()`` reports to (one per process)."""
    global _current
    _current = liveness


def progress(phase: str = RUN, *, step: int | None = None, total: int | None = None) -> None:
    """Progress of this process's trial, if one runs: training, evaluation and generation
    loops call it at every step or batch (training with its ``step`` of ``total``)."""
    if _current is not None:
        _current.progress(phase, step=step, total=total)
