"""How ``hpo serve`` runs the app under uvicorn: which proxies it believes, how long it waits.

uvicorn reads the client address and scheme from ``X-Forwarded-For`` / ``-Proto`` only when the
connection comes from a proxy listed in ``FORWARDED_ALLOW_IPS``. uvicorn's own default trusts
127.0.0.1, which lets any process on the host pick its address (and dodge the failed-token
limit); ``hpo serve`` trusts no proxy unless the variable names it.

uvicorn bounds the idle time between requests (``timeout_keep_alive``) but not the time a
client takes to send a request's headers: a connection trickling a header forever stays open.
``HeaderTimeoutH11`` closes a connection whose request headers are not complete within the
header timeout; the body's own deadline is the app's (``service.admission``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from hpo.core.settings import Settings, get_settings


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request's headers."""

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        # A kept-alive connection's next request starts its own deadline with its first bytes;
        # idle time before them is uvicorn's keep-alive timeout's to bound.
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the headers are in
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


class EnvHeaderTimeoutH11(HeaderTimeoutH11):
    """``HeaderTimeoutH11`` with the environment's header timeout: worker processes import it
    by name (a class built at run time does not cross to a spawned process)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = get_settings().api_header_timeout_s


def _options(host: str, port: int) -> dict[str, Any]:
    trusted = os.environ.get("FORWARDED_ALLOW_IPS", "")
    return {
        "host": host,
        "port": port,
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or None,
        "timeout_keep_alive": 5,
    }


def uvicorn_config(app: FastAPI, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    """The uvicorn configuration ``hpo serve`` runs ``app`` with in one process."""
    protocol = type(
        "H11", (HeaderTimeoutH11,), {"header_timeout_s": settings.api_header_timeout_s}
    )
    return uvicorn.Config(app, http=protocol, **_options(host, port))


def serve_processes(processes: int, *, host: str, port: int) -> None:
    """Serve with ``processes`` uvicorn worker processes on one socket.

    Each builds its app from the environment (``HPO_*``; the caller sets what its flags
    changed) and takes its share of the in-memory limits (``settings.per_process``).
    """
    os.environ["HPO_API_PROCESSES"] = str(processes)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        workers=processes,
        http=EnvHeaderTimeoutH11,
        **_options(host, port),
    )
