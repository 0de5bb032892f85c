"""Bounds on what one client can make the API hold: bodies, time, concurrency, failed tokens.

``ContentLengthLimit`` rejects oversized requests with a JSON error before the body is read
(FastAPI's own ``max_body_size`` answers in plain text; our API answers JSON everywhere): bodies
must declare their length, chunked uploads get 411, declared lengths over the limit 413.
``Turns`` is a bounded pool with a bounded queue, whose refusals are 503 with ``Retry-After``:
``service.admission`` gives owners' requests one turn each, and keeps others apart.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import OrderedDict, deque

from starlette.types import ASGIApp, Receive, Scope, Send


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
    """Refuses, before anything reads it, a body without a declared length (411), with an
    invalid one (400) or over ``max_bytes`` (413). The body is not read, so the connection
    closes after the answer. How long a body may take to arrive is ``service.admission``'s."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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
            await self.app(scope, receive, send)
            return
        await send_json(send, status, detail, {"Connection": "close"})


def declared_length(scope: Scope) -> int:
    """The request's declared body length (``ContentLengthLimit`` has checked it is one)."""
    value = dict(scope["headers"]).get(b"content-length", b"0")
    return int(value) if value.isdigit() else 0


class Turns:
    """At most ``limit`` holders at once; ``queue`` more wait up to ``wait_s`` for a turn.

    Sized to the database pool, the owners' turns keep requests from queueing on pooled
    connections (where a pool timeout would be a 503 after a long wait) and keep the process's
    memory bounded under a flood: a request past the queue, or one that waits too long, is
    answered 503 with ``Retry-After`` (``busy``).
    """

    def __init__(self, limit: int, *, queue: int = 0, wait_s: float = 1.0) -> None:
        self.queue = queue
        self.wait_s = wait_s
        self._slots = asyncio.Semaphore(limit)
        self._waiting = 0

    async def take(self) -> bool:
        """Wait for a turn; False when the queue is full or the wait ran out."""
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: taken without waiting
            return True
        if self._waiting >= self.queue:
            return False
        self._waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.wait_s)
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1
        return True

    def give_back(self) -> None:
        self._slots.release()

    @property
    def retry_after(self) -> str:
        return str(max(1, math.ceil(self.wait_s)))

    async def busy(self, send: Send, detail: str, *, close: bool) -> None:
        """The 503 for a request that got no turn (``close``: its body was not read)."""
        headers = {"Retry-After": self.retry_after}
        await send_json(send, 503, detail, headers | ({"Connection": "close"} if close else {}))


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
