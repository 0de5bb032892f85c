"""Reject oversized requests with a JSON error before the body is read.

FastAPI's own ``max_body_size`` answers in plain text; our API answers JSON everywhere. Bodies
must declare their length: chunked uploads get 411, declared lengths over the limit 413.
"""

from __future__ import annotations

import json

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
