"""Admission: a request takes one of the owners' turns only once its token is checked and its
body has arrived, so connections that are not (yet) an owner's never hold what owners need.

For each request but the exempt ones (health checks, documentation assets):

1. Its token (the bearer header, else the login cookie) is checked against the database as
   soon as its headers are in, at most ``checks`` at once (a short indexed query; waiting for
   one is bounded, then 503). A request that shows no token is not checked.
2. A request without a valid token (none, a wrong one; the public pages and sign-in too) is
   anonymous: it runs in a small pool of its own (``anonymous``: no queue, 503 at once when
   full) and its body must arrive within ``anonymous_timeout_s`` (408). The app answers it
   (401, 429, the documentation, the sign-in form); it never waits for or holds an owner's turn.
3. An owner's request has its whole body read first, within ``body_timeout_s`` (408), holding
   nothing shared; then it waits for one of the ``turns`` (bounded queue and wait, then 503
   with ``Retry-After``) unless ``takes_no_turn`` says it needs none, and runs with its body.

The check's result travels with the request (``checked_owner``): the route's own token check
uses it instead of querying again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.limits import Turns, declared_length, send_json

log = logging.getLogger(__name__)
TOKEN_CHECK = "hpo_token_check"  # scope["state"][TOKEN_CHECK]: (token, its owner or None)
BUSY = "the service is busy; try again shortly"


def checked_owner(scope: Scope, token: str, check: Callable[[], str | None]) -> str | None:
    """The owner admission found for ``token`` on this request, else ``check()``'s answer."""
    checked = scope.get("state", {}).get(TOKEN_CHECK)
    if checked is not None and checked[0] == token:
        return checked[1]
    return check()


def presented_token(scope: Scope, cookie: str) -> str | None:
    """The bearer token when the request sends one, else the login cookie's (as the dashboard
    reads them; the REST routes read the header only)."""
    headers = dict(scope["headers"])
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    scheme, token = get_authorization_scheme_param(authorization)
    if scheme.lower() == "bearer" and token:
        return token
    return cookie_parser(headers.get(b"cookie", b"").decode("latin-1")).get(cookie) or None


class Refused(Exception):
    """A request answered before the app runs."""

    def __init__(self, status: int, detail: str, headers: dict[str, str]) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


class Admission:
    """The middleware (see the module docstring). ``check_token`` gives a token's owner, None
    for an unknown, revoked or expired token; ``check_token=None``: authentication is off and
    every request is an owner's."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        check_token: Callable[[str], str | None] | None,
        cookie: str,
        turns: Turns,
        anonymous: Turns,
        checks: Turns,
        body_timeout_s: float,
        anonymous_timeout_s: float,
        exempt: Callable[[Scope], bool],
        takes_no_turn: Callable[[Scope], bool],
    ) -> None:
        self.app = app
        self.check_token = check_token
        self.cookie = cookie
        self.turns, self.anonymous, self.checks = turns, anonymous, checks
        self.body_timeout_s = body_timeout_s
        self.anonymous_timeout_s = anonymous_timeout_s
        self.exempt = exempt
        self.takes_no_turn = takes_no_turn

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope):
            await self.app(scope, receive, send)
            return
        try:
            owners = await self._is_owners(scope)
        except Refused as refused:
            close = {"Connection": "close"} if declared_length(scope) else {}
            await send_json(send, refused.status, refused.detail, refused.headers | close)
            return
        if owners:
            await self._owners(scope, receive, send)
        else:
            await self._anonymous(scope, receive, send)

    async def _is_owners(self, scope: Scope) -> bool:
        """Whether the request shows a valid token (always, with authentication off)."""
        if self.check_token is None:
            return True
        token = presented_token(scope, self.cookie)
        if token is None:
            return False
        if not await self.checks.take():
            raise Refused(503, BUSY, {"Retry-After": self.checks.retry_after})
        try:
            owner = await run_in_threadpool(self.check_token, token)
        except SQLAlchemyError as exc:
            log.warning("database unavailable: %s", exc)
            detail = "database unavailable, try again shortly"
            raise Refused(503, detail, {"Retry-After": "5"}) from None
        finally:
            self.checks.give_back()
        scope.setdefault("state", {})[TOKEN_CHECK] = (token, owner)
        return owner is not None

    async def _owners(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = await self._received(scope, receive, send, self.body_timeout_s)
        if received is None:
            return
        if self.takes_no_turn(scope):
            await self.app(scope, received, send)
            return
        if not await self.turns.take():
            await self.turns.busy(send, BUSY, close=False)
            return
        try:
            await self.app(scope, received, send)
        finally:
            self.turns.give_back()

    async def _anonymous(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await self.anonymous.take():
            detail = "too many requests without a valid token at once; try again shortly"
            await self.anonymous.busy(send, detail, close=declared_length(scope) > 0)
            return
        try:
            received = await self._received(scope, receive, send, self.anonymous_timeout_s)
            if received is not None:
                await self.app(scope, received, send)
        finally:
            self.anonymous.give_back()

    async def _received(
        self, scope: Scope, receive: Receive, send: Send, timeout_s: float
    ) -> Receive | None:
        """``receive`` with the whole body read ahead within ``timeout_s``; None when it did not
        arrive (the client left, or it took too long: then answered 408)."""
        if declared_length(scope) == 0:
            return receive
        try:
            async with asyncio.timeout(timeout_s):  # the whole body: trickling resets nothing
                body = await _read_body(receive)
        except TimeoutError:
            detail = f"request body not received within {timeout_s:g} s"
            await send_json(send, 408, detail, {"Connection": "close"})
            return None
        return None if body is None else _replay(body, receive)


async def _read_body(receive: Receive) -> bytes | None:
    """The request's body (at most its declared length: the HTTP parser sees to that), or None
    when the client left first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the app ``body`` first, then whatever the client sends next
    (a disconnect, which streaming responses listen for)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
