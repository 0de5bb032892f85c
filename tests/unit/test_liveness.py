"""Progress deadlines, the reports a supervised worker sends, and the supervisor acting on
them with real child processes (one stalls holding the GIL, one ignores SIGTERM)."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.deadline import Overrun
from worker.liveness import IDLE, RUN, SETUP, Liveness, Report, TrialOvertime, TrialStalled
from worker.supervisor import Child, Supervisor, plan

TIMEOUTS = {SETUP: 60.0, RUN: 5.0}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reports_round_trip_and_garbage_is_ignored() -> None:
    for report in (Report(7, RUN, 5.0), Report(None, IDLE, None)):
        assert Report.decode(report.encode().strip()) == report
    garbage = [
        b"",
        b"not json",
        b"[]",
        b'{"trial": "7", "phase": "run", "timeout": 1}',
        b'{"trial": 7, "phase": "run"}',
        b'{"trial": 7, "phase": "run", "timeout": "x"}',
    ]
    assert [Report.decode(line) for line in garbage] == [None] * len(garbage)


def test_each_phase_has_its_deadline_and_progress_moves_it() -> None:
    clock = Clock()
    live = Liveness(TIMEOUTS, clock=clock)
    clock.now += 1000
    assert live.overdue(clock.now) is None  # idle: no trial, no deadline
    live.progress()
    assert live.phase == IDLE  # progress between trials means nothing
    with live.trial(3):
        assert (live.trial_id, live.phase) == (3, SETUP)
        clock.now += TIMEOUTS[SETUP]
        assert live.overdue(clock.now) is None
        clock.now += 1
        assert live.overdue(clock.now) == pytest.approx(1)
        live.progress()
        assert live.phase == RUN and live.overdue(clock.now) is None
        clock.now += TIMEOUTS[RUN] + 2
        assert live.overdue(clock.now) == pytest.approx(2)
    assert (live.trial_id, live.phase) == (None, IDLE)
    assert live.overdue(clock.now) is None


def test_the_watchdog_interrupts_a_python_level_stall() -> None:
    """A blocked wait (as on a FIFO) releases the GIL: the watchdog's signal ends it."""
    live = Liveness({SETUP: 60.0, RUN: 0.3})
    live.watch()
    try:
        stalled = pytest.raises(TrialStalled, match="no progress in phase 'run' within 0.3 s")
        with stalled, live.trial(1):
            live.progress()
            threading.Event().wait(60)
        with live.trial(2):  # the next trial goes on undisturbed while it makes progress
            for _ in range(10):
                live.progress()
                threading.Event().wait(0.1)
    finally:
        live.close()


def test_a_trial_that_makes_progress_still_ends_at_its_time_limit() -> None:
    """A decode trial keeps generating batches (progress) past its time: it is interrupted
    as overtime, which fails it as a deadline, not as a stall to retry."""
    live = Liveness({SETUP: 60.0, RUN: 60.0})
    live.watch()
    try:
        with pytest.raises(TrialOvertime) as overtime, live.trial(1, max_seconds=0.3):
            for _ in range(600):
                live.progress()
                threading.Event().wait(0.1)
        assert isinstance(overtime.value, Overrun)
        with live.trial(2, max_seconds=60):
            for _ in range(5):
                live.progress()
                threading.Event().wait(0.1)
    finally:
        live.close()


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    os.set_blocking(read, False)
    yield read, write
    os.close(read)
    os.close(write)


def _reports(read: int) -> list[Report | None]:
    try:
        data = os.read(read, 1 << 16)
    except BlockingIOError:
        return []
    return [Report.decode(line) for line in data.splitlines()]


def test_changes_are_reported_at_once_and_steady_progress_once_a_second(
    pipe: tuple[int, int],
) -> None:
    read, write = pipe
    clock = Clock()
    live = Liveness(TIMEOUTS, report_fd=write, clock=clock)
    with live.trial(11):
        live.progress()
        for _ in range(50):  # many steps within a second: one report
            clock.now += 0.01
            live.progress()
        clock.now += 1
        live.progress()
    assert _reports(read) == [
        Report(11, SETUP, TIMEOUTS[SETUP]),
        Report(11, RUN, TIMEOUTS[RUN]),
        Report(11, RUN, TIMEOUTS[RUN]),
        Report(None, IDLE, None),
    ]


def test_training_reports_carry_the_step_and_a_new_trial_starts_without_one(
    pipe: tuple[int, int],
) -> None:
    """``hpo run``'s live view shows step/total from these reports."""
    read, write = pipe
    clock = Clock()
    live = Liveness(TIMEOUTS, report_fd=write, clock=clock)
    with live.trial(4):
        live.progress(step=1, total=30)
        clock.now += 1
        live.progress()  # an evaluation batch: the step stays where training left it
    with live.trial(5):
        pass
    assert _reports(read) == [
        Report(4, SETUP, TIMEOUTS[SETUP]),
        Report(4, RUN, TIMEOUTS[RUN], step=1, total=30),
        Report(4, RUN, TIMEOUTS[RUN], step=1, total=30),
        Report(None, IDLE, None),
        Report(5, SETUP, TIMEOUTS[SETUP]),
        Report(None, IDLE, None),
    ]
    assert Report.decode(b'{"trial": 4, "phase": "run", "timeout": 1, "step": "1"}') is None


def test_a_full_pipe_costs_reports_never_a_blocked_trial(pipe: tuple[int, int]) -> None:
    read, write = pipe
    clock = Clock()
    live = Liveness(TIMEOUTS, report_fd=write, clock=clock)
    with live.trial(1):
        for _ in range(20_000):  # far more than a pipe holds, nobody reading
            clock.now += 1
            live.progress()
    assert all(r is not None for r in _reports(read))  # whole lines only


def test_plan_runs_one_child_on_the_device_given() -> None:
    (child,) = plan(None, device="cuda:1", environ={}, probe=list)
    assert child.name == "worker0"
    assert child.argv[child.argv.index("--device") + 1] == "cuda:1"


# A child of the supervisor: ``--progress-fd=N`` is its last argument.
CHILD = textwrap.dedent(
    """
    import os, re, signal, sys, time
    fd = int(sys.argv[-1].split("=")[1])
    mode, marker = sys.argv[1], sys.argv[2]
    if os.path.exists(marker):
        sys.exit(0)  # restarted: done
    open(marker, "w").close()
    if mode == "gil":
        os.write(fd, b'{"trial": 7, "phase": "run", "timeout": 0.2}\\n')
        re.fullmatch("(a+)+b", "a" * 40)  # holds the GIL: no Python handler runs
    else:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.write(fd, b'{"trial": 9, "phase": "setup", "timeout": 3600}\\n')
        os.kill(os.getppid(), signal.SIGTERM)
        while True:
            time.sleep(1)
    """
)


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize(
    ("mode", "killed"),
    [
        ("gil", (7, "stalled", "no progress in phase 'run'")),
        ("term", (9, "shutdown", "did not stop within 0.5 s of SIGTERM")),
    ],
    ids=["stalled-holding-the-gil", "ignores-sigterm"],
)
def test_the_supervisor_kills_what_does_not_progress_or_stop(
    mode: str, killed: tuple[int, str, str], tmp_path: Path, restore_signals: None
) -> None:
    failed: list[tuple[int, str, str]] = []
    child = Child("c", (sys.executable, "-c", CHILD, mode, str(tmp_path / "started")), {})
    supervisor = Supervisor(
        [child],
        backoff_s=0.01,
        poll_s=0.05,
        stall_margin_s=0.2,
        shutdown_grace_s=0.5,
        fail_trial=lambda *args: failed.append(args),
    )
    supervisor.run()  # returns: the restarted child exits 0, or the SIGTERM stopped it
    [(trial, reason, error)] = failed
    assert (trial, reason) == killed[:2]
    assert killed[2] in error
