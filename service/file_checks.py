"""Registration's file checks, bounded: a deadline per check, caps on checks per owner and in all.

The checks read files a tenant controls (``hpo.core.studies.check_spec``). They run in a thread
of their own, before the request opens a database session, so a check that blocks (a FIFO, a
hung network mount) holds no pooled connection and no request task past the deadline. A thread
blocked in a system call cannot be cancelled, only abandoned: the caps bound how many one owner
can leave behind (that owner then gets 429 until they end) and how many there are in all (503).
Abandoned threads are daemons, so they never hold up the process's exit.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from fastapi import HTTPException

from hpo.core.errors import SpecError


class FileChecks:
    def __init__(self, *, timeout_s: float, per_owner: int, threads: int) -> None:
        self.timeout_s = timeout_s
        self.per_owner = per_owner
        self.threads = threads
        self._lock = threading.Lock()
        self._running: Counter[str] = Counter()

    def run(self, owner: str, check: Callable[[], None]) -> None:
        """Run ``check`` for ``owner`` within the deadline; its own errors pass through.

        Raises:
            SpecError: The check did not finish within ``timeout_s`` (422).
            HTTPException: 429 when ``owner`` has ``per_owner`` checks running, 503 when all
                ``threads`` are taken.
        """
        with self._lock:
            if self._running[owner] >= self.per_owner:
                raise HTTPException(
                    429,
                    f"{self.per_owner} registrations of yours are still checking their files; "
                    "try again when they have answered",
                    {"Retry-After": str(int(self.timeout_s))},
                )
            if self._running.total() >= self.threads:
                raise HTTPException(
                    503,
                    "too many registrations are checking their files; try again shortly",
                    {"Retry-After": str(int(self.timeout_s))},
                )
            self._running[owner] += 1
        done = threading.Event()
        failure: list[BaseException] = []

        def target() -> None:
            try:
                check()
            except BaseException as exc:  # handed to the request's thread
                failure.append(exc)
            finally:
                with self._lock:
                    self._running[owner] -= 1
                    if not self._running[owner]:
                        del self._running[owner]
                done.set()

        threading.Thread(target=target, name=f"file-check-{owner}", daemon=True).start()
        if not done.wait(self.timeout_s):
            raise SpecError(
                f"the files this spec names could not be checked within {self.timeout_s:g} s: "
                "one of them blocks or reads too slowly (a FIFO or device instead of a regular "
                "file, or a hung network mount?)",
                loc=("train",),
            )
        if failure:
            raise failure[0]
