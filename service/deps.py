"""Typed dependencies: routes take these as parameters and stay short."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from optuna.storages import RDBStorage
from sqlalchemy.orm import Session

from hpo.db import session_scope
from hpo.settings import Settings
from service.auth import owner_of

LOCAL_OWNER = "local"
_bearer = HTTPBearer(auto_error=False, description="A token from `hpo token create NAME`.")


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.sessions) as session:
        yield session


def get_storage(request: Request) -> RDBStorage:
    return request.app.state.storage


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_db)]
StorageDep = Annotated[RDBStorage, Depends(get_storage)]


def get_owner(
    settings: SettingsDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    if settings.auth == "disabled":
        return LOCAL_OWNER
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise HTTPException(401, "missing bearer token (Authorization: Bearer ...)", challenge)
    owner = owner_of(session, credentials.credentials)
    if owner is None:
        raise HTTPException(401, "invalid bearer token", challenge)
    return owner


CurrentOwner = Annotated[str, Depends(get_owner)]
