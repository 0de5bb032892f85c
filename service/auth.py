"""Bearer tokens: created once, stored as SHA-256 hashes, resolved to an owner."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from hpo.db import ApiToken
from hpo.errors import StudyConflict

TOKEN_PREFIX = "hpo_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, *, name: str, owner: str) -> str:
    """Store a new token's hash and return the plain token (shown once, never stored).

    Raises:
        StudyConflict: A token of that name exists.
    """
    if session.scalar(select(ApiToken).where(ApiToken.name == name)) is not None:
        raise StudyConflict(f"a token named {name!r} already exists")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, owner=owner, token_hash=hash_token(token)))
    return token


def owner_of(session: Session, token: str) -> str | None:
    """The owner a token belongs to, or None for an unknown token."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    return row.owner if row else None
