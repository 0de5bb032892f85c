"""Reject oversized requests with a JSON error before the body is read.

FastAPI's own ``max_body_size`` answers in plain text; our API answers JSON everywhere. Bodies
must declare their length: chunked uploads get 411, declared lengths over the limit 413.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque

from starlette.types import ASGIApp, Receive, Scope, Send


class ContentLengthLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
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
            body = json.dumps({"detail": detail}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class FailedAuthLimiter:
    """At most ``limit`` failed token checks per client address in a sliding ``window_s``.

    Tokens are 256-bit random, so this is not what stops guessing; it keeps a scanner from
    hammering the token table and the logs. Past the limit every token check from that address
    answers 429 until the window clears. Behind a reverse proxy all clients share its address:
    raise the limit there (``HPO_AUTH_FAILURES_PER_MINUTE``).
    """

    def __init__(self, limit: int, *, window_s: float = 60.0, max_clients: int = 10_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may try now."""
        now = time.monotonic()
        with self._lock:
            failures = self._failures.get(client)
            if failures is None:
                return None
            while failures and now - failures[0] > self.window_s:
                failures.popleft()
            if len(failures) < self.limit:
                return None
            return self.window_s - (now - failures[0])

    def failed(self, client: str) -> None:
        with self._lock:
            failures = self._failures.pop(client, None) or deque()
            failures.append(time.monotonic())
            self._failures[client] = failures  # most recent last
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
