"""One worker process per GPU of a node (or N CPU processes), kept running.

``hpo worker --gpus all`` plans a child ``hpo worker --device cuda:0`` per visible GPU, each
pinned with ``CUDA_VISIBLE_DEVICES`` to its own device, and supervises them: a child that
crashes is restarted with exponential back-off; SIGTERM/SIGINT are forwarded, so every child
re-queues its running trial, and the supervisor exits 0 once they are all gone. A child that
exits 0 (``--max-trials``, ``--idle-exit``) is done and not restarted.

Compose, SLURM and Kubernetes start this one command per node, container or task; none of
them can hand each replica of one service its own GPU on a single host (docker/compose#11863).
"""

from __future__ import annotations

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

log = logging.getLogger("hpo.supervisor")

CHILD_COMMAND = (sys.executable, "-m", "hpo", "worker")


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
    cpu_threads: int | None = None,
    worker_args: tuple[str, ...] = (),
    environ: Mapping[str, str] = os.environ,
    probe: Callable[[], list[str]] = nvidia_smi_gpus,
) -> list[Child]:
    """The children for ``--gpus`` (``all`` or positions such as ``0,2`` among the visible
    GPUs), or ``processes`` CPU children when ``gpus`` is None or no GPU is visible.

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
        return [
            Child(f"cpu{i}", (*CHILD_COMMAND, "--device", "cpu", *common), {})
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


@dataclass
class _Slot:
    child: Child
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float = 0.0
    crashes: int = 0
    done: bool = False


class Supervisor:
    """Runs ``children`` until each exits 0 or a SIGTERM/SIGINT has stopped them all.

    A crash restarts its child after ``backoff_s * 2**(crashes - 1)`` seconds (at most
    ``max_backoff_s``); a child that ran ``stable_s`` seconds counts crashes from zero again.
    """

    def __init__(
        self,
        children: list[Child],
        *,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        stable_s: float = 300.0,
        poll_s: float = 0.2,
    ) -> None:
        if not children:
            raise ValueError("a supervisor needs at least one child.")
        self.slots = [_Slot(child) for child in children]
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.poll_s = poll_s
        self.stopping = threading.Event()

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
            return
        pid, slot.proc = slot.proc.pid, None
        if code == 0 or self.stopping.is_set():
            slot.done = True
            self._event("child_exit", child=slot.child.name, pid=pid, code=code)
            return
        slot.crashes = 1 if now - slot.started >= self.stable_s else slot.crashes + 1
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (slot.crashes - 1))
        slot.restart_at = now + delay
        self._event("child_crash", child=slot.child.name, pid=pid, code=code, restart_in=delay)

    def _start(self, slot: _Slot, now: float) -> None:
        slot.proc = subprocess.Popen(slot.child.argv, env={**os.environ, **slot.child.env})
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
