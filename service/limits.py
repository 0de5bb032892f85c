"""Bounds on what one client can make the API hold: bodies, time, concurrency, failed tokens.

``ContentLengthLimit`` rejects oversized requests with a JSON error before the body is read
(FastAPI's own ``max_body_size`` answers in plain text; our API answers JSON everywhere): bodies
must declare their length, chunked uploads get 411, declared lengths over the limit 413, and a
body that does not arrive within ``body_timeout_s`` 408. ``ConcurrencyLimit`` admits a bounded
number of requests at once and a bounded queue; the rest get 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def send_json(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    """A complete JSON error response, for middleware that answers before the app."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ContentLengthLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"0")
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            status, detail = 411, "request bodies must declare Content-Length"
        elif not declared.isdigit():
            status, detail = 400, "invalid Content-Length header"
        elif int(declared) > self.max_bytes:
            status, detail = 413, f"request body larger than {self.max_bytes} bytes"
        else:
            await self._bounded(scope, receive, send, has_body=int(declared) > 0)
            return
        await send_json(send, status, detail, {})

    async def _bounded(
        self, scope: Scope, receive: Receive, send: Send, *, has_body: bool
    ) -> None:
        """Run the app with a deadline on reading the body: a slow sender holds no task forever.

        The deadline covers the whole body, not each chunk, so trickling bytes does not reset it.
        Past it the app is told the client left, and whatever it answers becomes a 408.
        """
        if not has_body:
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.body_timeout_s
        timed_out = answered = False
        detail = f"request body not received within {self.body_timeout_s:g} s"

        async def timed_receive() -> Message:
            nonlocal timed_out
            try:
                return await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                timed_out = True
                return {"type": "http.disconnect"}

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if not timed_out:
                await send(message)
            elif message["type"] == "http.response.start" and not answered:
                answered = True
                await send_json(send, 408, detail, {"Connection": "close"})

        await self.app(scope, timed_receive, guarded_send)
        if timed_out and not answered:
            await send_json(send, 408, detail, {"Connection": "close"})


class ConcurrencyLimit:
    """At most ``limit`` requests run at once; ``queue`` more wait up to ``wait_s`` for a turn.

    Sized to the database pool, this keeps requests from queueing on pooled connections (where
    a pool timeout would be a 500) and keeps the process's memory bounded under a flood: a
    request past the queue, or one that waits too long, answers 503 with ``Retry-After``.
    Requests ``exempt`` says yes to never wait.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        queue: int,
        wait_s: float,
        exempt: Callable[[Scope], bool] = lambda _: False,
    ) -> None:
        self.app = app
        self.queue = queue
        self.wait_s = wait_s
        self.exempt = exempt
        self._slots = asyncio.Semaphore(limit)
        self._waiting = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope):
            await self.app(scope, receive, send)
            return
        if self._slots.locked() and self._waiting >= self.queue:
            await self._busy(send)
            return
        self._waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.wait_s)
        except TimeoutError:
            await self._busy(send)
            return
        finally:
            self._waiting -= 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()

    async def _busy(self, send: Send) -> None:
        retry = str(max(1, math.ceil(self.wait_s)))
        await send_json(
            send, 503, "the service is busy; try again shortly", {"Retry-After": retry}
        )


class FailedAuthLimiter:
    """At most ``limit`` failed token checks per client address in a sliding ``window_s``.

    Tokens are 256-bit random, so this is not what stops guessing; it keeps a scanner from
    hammering the logs. Only failures count, and a valid token is never refused: the token is
    checked first, and only an invalid one from an address over the limit gets 429. The address
    is the socket's peer unless it is a proxy listed in ``FORWARDED_ALLOW_IPS`` (``hpo serve``
    trusts none by default), so a client cannot pick its own with ``X-Forwarded-For``. Behind a
    reverse proxy every client it does not name shares its address: raise the limit there
    (``HPO_AUTH_FAILURES_PER_MINUTE``).
    """

    def __init__(self, limit: int, *, window_s: float = 60.0, max_clients: int = 10_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def failed(self, client: str) -> float | None:
        """Count a failed check from ``client``; the seconds it must wait when over the limit."""
        now = time.monotonic()
        with self._lock:
            failures = self._failures.pop(client, None) or deque(maxlen=self.limit + 1)
            while failures and now - failures[0] > self.window_s:
                failures.popleft()
            failures.append(now)
            self._failures[client] = failures  # most recent last
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
            if len(failures) <= self.limit:
                return None
            # The next failure is allowed once the oldest of the last ``limit`` leaves the window.
            return self.window_s - (now - failures[1])
