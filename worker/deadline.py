"""A time limit on work a tenant's input drives: reading and tokenizing a dataset, rendering a
model folder's chat template.

Why a signal: that work is Python (Jinja's compiled template loops, ``datasets.map`` batches)
holding the GIL, so no other thread could stop it; Jinja's sandbox caps ``range()`` at 100,000
items but not two nested loops, string products or recursive macros, so no sandbox rule bounds
every template. A SIGALRM handler runs between bytecodes of the main thread and raises there,
whatever the loop. A single C call that never returns to Python is the supervisor's to end.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Overrun(Exception):
    """Work on a tenant's input ran past its time limit; the trial fails with reason deadline."""


@contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise Overrun inside the block once it has run ``seconds``.

    Only the main thread receives signals: elsewhere (a worker run in a thread by a test) the
    block runs unbounded. Inside another deadline the outer one, already running, bounds it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        yield
        return

    def expired(signum: int, frame: FrameType | None) -> None:
        raise Overrun(f"{what} took longer than {seconds:g} s (HPO_PREPARE_TIMEOUT)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
