"""Worker processes, kept running and kept making progress: one per GPU of a node, N CPU
processes, or one (``hpo worker`` always runs its trials under this supervisor).

``hpo worker --gpus all`` plans a child ``hpo worker --device cuda:0`` per visible GPU, each
pinned with ``CUDA_VISIBLE_DEVICES`` to its own device, and supervises them: a child that
crashes is restarted with exponential back-off; SIGTERM/SIGINT are forwarded, so every child
re-queues its running trial, and the supervisor exits 0 once they are all gone. A child that
exits 0 (``--max-trials``, ``--idle-exit``) is done and not restarted.

Each child reports its trial's progress on a pipe (``worker.liveness.Report``). A child whose
trial reports none for its phase's timeout plus ``stall_margin_s`` is stuck where its own
check cannot act (C code holding the GIL ignores Python signal handlers): it is SIGKILLed,
its trial failed as ``stalled`` and retried through the database, and the child restarted.
A child still there ``shutdown_grace_s`` after a forwarded SIGTERM is SIGKILLed the same
way, so a SIGTERM always ends the worker. Children die with the supervisor (PDEATHSIG), so
a SIGKILL of the supervisor leaves no worker behind.

Each child puts itself under its memory limit before its first trial (``worker.memory``:
RLIMIT_AS on CPU), so a trial past it fails with reason ``resources`` inside the child, which
goes on to its next trial.

Compose, SLURM and Kubernetes start this one command per node, container or task; none of
them can hand each replica of one service its own GPU on a single host (docker/compose#11863).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType

from hpo.core.settings import Settings
from worker.liveness import STALLED, Report

log = logging.getLogger("hpo.supervisor")

CHILD_COMMAND = (sys.executable, "-m", "hpo", "worker")
PROGRESS_FD_OPTION = "--progress-fd"
# Fails a killed child's trial (Optuna's trial id) with a reason and an error text.
FailTrial = Callable[[int, str, str], None]
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Child:
    """One supervised process: its command and what it adds to the environment."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]


def nvidia_smi_gpus() -> list[str]:
    """UUIDs of the node's GPUs in PCI bus order; none without ``nvidia-smi``."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    found = subprocess.run(
        [smi, "--query-gpu=uuid", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [line.strip() for line in found.stdout.splitlines() if line.strip()]


def visible_gpus(environ: Mapping[str, str], probe: Callable[[], list[str]]) -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set (SLURM sets it to the
    allocation), else every GPU the probe finds."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [g.strip() for g in environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    return probe()


def plan(
    gpus: str | None,
    *,
    processes: int = 1,
    device: str = "cpu",
    cpu_threads: int | None = None,
    worker_args: tuple[str, ...] = (),
    environ: Mapping[str, str] = os.environ,
    probe: Callable[[], list[str]] = nvidia_smi_gpus,
) -> list[Child]:
    """The children for ``--gpus`` (``all`` or positions such as ``0,2`` among the visible
    GPUs), or ``processes`` children on ``device`` when ``gpus`` is None or no GPU is visible.

    ``cpu_threads`` (default: the cores this process may run on) is split between the
    children: oversubscribed torch threads slow training by an order of magnitude.

    Raises:
        ValueError: ``gpus`` is malformed or names a GPU that is not visible.
    """
    if processes < 1:
        raise ValueError(f"processes must be at least 1, but got {processes=}.")
    devices: list[str] = []
    if gpus is not None:
        visible = visible_gpus(environ, probe)
        if gpus == "all":
            devices = visible
        else:
            try:
                positions = [int(p) for p in gpus.split(",")]
            except ValueError:
                raise ValueError(
                    f"gpus must be 'all' or a list like 0,2, but got {gpus=}."
                ) from None
            if visible and not all(0 <= p < len(visible) for p in positions):
                raise ValueError(f"{gpus=} names a GPU outside the {len(visible)} visible.")
            devices = [visible[p] for p in positions] if visible else []
    count = len(devices) or processes
    threads = max(1, (cpu_threads or len(os.sched_getaffinity(0))) // count)
    common = ("--cpu-threads", str(threads), *worker_args)
    if not devices:
        name = "cpu" if device == "cpu" else "worker"
        return [
            Child(f"{name}{i}", (*CHILD_COMMAND, "--device", device, *common), {})
            for i in range(processes)
        ]
    # PCI order makes an index mean the GPU nvidia-smi shows under it.
    return [
        Child(
            f"gpu{i}",
            (*CHILD_COMMAND, "--device", "cuda:0", *common),
            {"CUDA_VISIBLE_DEVICES": device, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
        )
        for i, device in enumerate(devices)
    ]


def _die_with_parent(parent: int) -> Callable[[], None]:
    """Run in the child before exec: SIGKILL it when the supervisor dies (Linux)."""

    def arm() -> None:
        if sys.platform == "linux":
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # it died before the line above
            os.kill(os.getpid(), signal.SIGKILL)

    return arm


def trial_failer(settings: Settings) -> FailTrial:
    """Fails a killed child's trial in the database, connecting only then."""

    def fail(trial_id: int, reason: str, error: str) -> None:
        from hpo.core.storage import make_storage  # Optuna: not before a child was killed

        storage = make_storage(settings, pool_size=1, max_overflow=2)
        try:
            storage.fail_killed(trial_id, reason=reason, error=error)
        finally:
            storage.engine.dispose()

    return fail


@dataclass
class _Slot:
    child: Child
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float = 0.0
    crashes: int = 0
    done: bool = False
    reports: int | None = None  # the read end of the child's progress pipe
    pending: bytes = b""
    report: Report | None = None
    heard: float = 0.0  # when that report came, on this process's clock


class Supervisor:
    """Runs ``children`` until each exits 0 or a SIGTERM/SIGINT has stopped them all.

    A crash restarts its child after ``backoff_s * 2**(crashes - 1)`` seconds (at most
    ``max_backoff_s``); a child that ran ``stable_s`` seconds counts crashes from zero again.
    A child killed for a stall counts as a crash. ``fail_trial`` fails the trial of a child
    that was killed (without it, the trial's heartbeat going stale fails it later).
    """

    def __init__(
        self,
        children: list[Child],
        *,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        stable_s: float = 300.0,
        poll_s: float = 0.2,
        stall_margin_s: float = 30.0,
        shutdown_grace_s: float = 30.0,
        fail_trial: FailTrial | None = None,
    ) -> None:
        if not children:
            raise ValueError("a supervisor needs at least one child.")
        self.slots = [_Slot(child) for child in children]
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.poll_s = poll_s
        self.stall_margin_s = stall_margin_s
        self.shutdown_grace_s = shutdown_grace_s
        self.fail_trial = fail_trial
        self.stopping = threading.Event()
        self.stopping_since = 0.0

    @classmethod
    def for_settings(cls, children: list[Child], settings: Settings) -> Supervisor:
        """Stall margin (``grace_period``), shutdown grace and trial failing per ``settings``."""
        return cls(
            children,
            stall_margin_s=settings.grace_period,
            shutdown_grace_s=settings.shutdown_grace,
            fail_trial=trial_failer(settings),
        )

    def run(self, *, handle_signals: bool = True) -> None:
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        self._event("supervisor_start", children=[s.child.name for s in self.slots])
        while not all(slot.done for slot in self.slots):
            now = time.monotonic()
            for slot in self.slots:
                self._tend(slot, now)
            time.sleep(self.poll_s)
        self._event("supervisor_exit")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Forward ``sig`` to every child and restart none from now on."""
        if not self.stopping.is_set():
            self.stopping_since = time.monotonic()
        self.stopping.set()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(sig)

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        self._event("supervisor_stop", signal=signal.Signals(signum).name)
        self.stop(signum)

    def _tend(self, slot: _Slot, now: float) -> None:
        if slot.done:
            return
        if slot.proc is None:
            if self.stopping.is_set():
                slot.done = True
            elif now >= slot.restart_at:
                self._start(slot, now)
            return
        code = slot.proc.poll()
        if code is None:
            self._listen(slot)
            self._check(slot, now)
            return
        self._close_reports(slot)
        pid, slot.proc = slot.proc.pid, None
        if code == 0 or self.stopping.is_set():
            slot.done = True
            self._event("child_exit", child=slot.child.name, pid=pid, code=code)
            return
        slot.crashes = 1 if now - slot.started >= self.stable_s else slot.crashes + 1
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (slot.crashes - 1))
        slot.restart_at = now + delay
        self._event("child_crash", child=slot.child.name, pid=pid, code=code, restart_in=delay)

    def _listen(self, slot: _Slot) -> None:
        """Take in the child's progress reports (its pipe never blocks this loop)."""
        if slot.reports is None:
            return
        try:
            data = os.read(slot.reports, 1 << 16)
        except BlockingIOError:
            return
        *lines, slot.pending = (slot.pending + data).split(b"\n")
        for line in lines:
            report = Report.decode(line)
            if report is not None:
                slot.report, slot.heard = report, time.monotonic()

    def _check(self, slot: _Slot, now: float) -> None:
        """Kill a child whose trial is stalled, or that outlived its shutdown grace."""
        assert slot.proc is not None
        report = slot.report
        if self.stopping.is_set():
            if now - self.stopping_since > self.shutdown_grace_s:
                error = f"killed: did not stop within {self.shutdown_grace_s:g} s of SIGTERM"
                self._kill(slot, "shutdown", error)
            return
        if report is None or report.timeout is None or report.trial is None:
            return
        if now - slot.heard > report.timeout + self.stall_margin_s:
            error = (
                f"killed: no progress in phase {report.phase!r} within {report.timeout:g} s "
                "(the process did not respond: C code holding the GIL?)"
            )
            self._kill(slot, STALLED, error)

    def _kill(self, slot: _Slot, reason: str, error: str) -> None:
        assert slot.proc is not None
        slot.proc.kill()
        slot.proc.wait()
        trial = slot.report.trial if slot.report is not None else None
        self._event(
            "child_killed", child=slot.child.name, pid=slot.proc.pid, reason=reason, trial_id=trial
        )
        slot.report = None
        if trial is None or self.fail_trial is None:
            return
        try:
            self.fail_trial(trial, reason, error)
        except Exception as exc:  # the database is down: the stale heartbeat fails it later
            self._event("trial_fail_error", trial_id=trial, error=f"{type(exc).__name__}: {exc}")

    def _close_reports(self, slot: _Slot) -> None:
        if slot.reports is not None:
            os.close(slot.reports)
        slot.reports, slot.pending, slot.report = None, b"", None

    def _start(self, slot: _Slot, now: float) -> None:
        read, write = os.pipe()
        os.set_blocking(read, False)
        try:
            slot.proc = subprocess.Popen(
                (*slot.child.argv, f"{PROGRESS_FD_OPTION}={write}"),
                env={**os.environ, **slot.child.env},
                pass_fds=(write,),
                preexec_fn=_die_with_parent(os.getpid()),  # noqa: PLW1509  # no threads here
            )
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        slot.reports = read
        slot.started = now
        if self.stopping.is_set():  # a signal came while it started: it missed the forward
            slot.proc.send_signal(signal.SIGTERM)
        self._event(
            "child_start",
            child=slot.child.name,
            pid=slot.proc.pid,
            crashes=slot.crashes,
            **slot.child.env,
        )

    def _event(self, event: str, **fields: object) -> None:
        log.info(json.dumps({"event": event, "pid": os.getpid(), **fields}))
