"""API bearer tokens: created once, stored as SHA-256 hashes, resolved to an owner.

A token is shown once at creation; the table keeps its hash, so a database dump reveals no
usable token. Revoked or expired tokens resolve to no owner.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sqlalchemy import Connection, bindparam, or_, select
from sqlalchemy.orm import Session

from hpo.core.db import ApiToken, utcnow
from hpo.core.errors import StudyConflict, TokenNotFound

TOKEN_PREFIX = "hpo_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, *, name: str, owner: str, expires_in: dt.timedelta | None = None
) -> str:
    """Store a new token's hash and return the plain token (shown once, never stored).

    Raises:
        StudyConflict: A token of that name exists.
    """
    if session.scalar(select(ApiToken).where(ApiToken.name == name)) is not None:
        raise StudyConflict(f"a token named {name!r} already exists")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = utcnow() + expires_in if expires_in is not None else None
    session.add(
        ApiToken(name=name, owner=owner, token_hash=hash_token(token), expires_at=expires_at)
    )
    return token


# Built once: every request runs it, and building it costs more than the indexed lookup.
_OWNER = select(ApiToken.owner).where(
    ApiToken.token_hash == bindparam("token_hash"),
    ApiToken.revoked_at.is_(None),
    or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > bindparam("now")),
)


def owner_of(db: Session | Connection, token: str) -> str | None:
    """The owner a live token belongs to; None for an unknown, revoked or expired token."""
    conn = db.connection() if isinstance(db, Session) else db
    owner: str | None = conn.scalar(_OWNER, {"token_hash": hash_token(token), "now": utcnow()})
    return owner


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(session: Session, *, name: str) -> ApiToken:
    """Revoke the token ``name`` at once; its row stays for the record.

    Raises:
        TokenNotFound: No token of that name.
    """
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise TokenNotFound(f"no token named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
