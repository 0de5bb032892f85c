"""Typed dependencies: routes take these as parameters and stay short."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from optuna.storages import RDBStorage
from sqlalchemy.orm import Session

from hpo.core.db import session_scope
from hpo.core.settings import Settings
from hpo.core.tokens import owner_of
from service.admission import checked_owner
from service.file_checks import FileChecks

T = TypeVar("T")
LOCAL_OWNER = "local"
_bearer = HTTPBearer(auto_error=False, description="A token from `hpo token create NAME`.")


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.sessions) as session:
        yield session


async def get_storage(request: Request) -> RDBStorage:
    return request.app.state.storage


async def get_file_checks(request: Request) -> FileChecks:
    return request.app.state.file_checks


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# scope="function": the commit runs when the route returns, before the response is sent, so a
# client never acts on an answer whose write is not yet committed.
SessionDep = Annotated[Session, Depends(get_db, scope="function")]
StorageDep = Annotated[RDBStorage, Depends(get_storage)]
FileChecksDep = Annotated[FileChecks, Depends(get_file_checks)]


def authenticate(request: Request, session: Session, token: str | None) -> str:
    """The owner of ``token``, or an HTTP 401/429 error.

    Shared by the REST routes (bearer header) and the dashboard (header or login cookie). The
    token is checked before the failed-check limit is, so a valid token is never refused.
    """
    settings: Settings = request.app.state.settings
    if settings.auth == "disabled":
        return LOCAL_OWNER
    challenge = {"WWW-Authenticate": "Bearer"}
    if token is None:
        raise HTTPException(
            401,
            "missing bearer token (Authorization: Bearer ...; the CLI reads HPO_TOKEN)",
            challenge,
        )
    owner = checked_owner(request.scope, token, lambda: owner_of(session, token))
    if owner is not None:
        return owner
    # uvicorn sets the client from X-Forwarded-For only for the proxies FORWARDED_ALLOW_IPS names.
    client = request.client.host if request.client else "unknown"
    wait = request.app.state.auth_limiter.failed(client)
    if wait is not None:
        raise HTTPException(
            429,
            "too many failed token checks from this address; try again later",
            {"Retry-After": str(math.ceil(wait))},
        )
    raise HTTPException(401, "invalid bearer token (unknown, revoked or expired)", challenge)


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def read_as_owner(
    request: Request, credentials: Credentials, read: Callable[[Session, str], T]
) -> T:
    """``read(session, owner)`` after the token check, both in one threadpool hop.

    A read route is ``async`` and its other dependencies too, so a request crosses to a thread
    once, not once per dependency, and its answer is serialised on the loop. Reads never write:
    the session's commit is an empty one.
    """
    token = credentials.credentials if credentials else None

    def run() -> T:
        with session_scope(request.app.state.sessions) as session:
            return read(session, authenticate(request, session, token))

    return await run_in_threadpool(run)


def get_owner(request: Request, session: SessionDep, credentials: Credentials) -> str:
    # The request's session: the token was checked at admission (``service.admission``), so
    # the route's first query takes its connection: a read costs one checkout there (and one
    # ping). A route that does slow work before its first query (registration's file checks)
    # commits first, giving the connection back.
    return authenticate(request, session, credentials.credentials if credentials else None)


CurrentOwner = Annotated[str, Depends(get_owner)]
