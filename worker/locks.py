"""Locks a worker holds while it checks a budget or a quota and claims a trial.

PostgreSQL: a session advisory lock, visible to every node. SQLite (the one-machine demo):
an ``flock`` on a file beside the database.
"""

from __future__ import annotations

import fcntl
import zlib
from pathlib import Path
from typing import Self, TextIO

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.engine import make_url

from hpo.core.owners import owner_key

_NAMESPACE = zlib.crc32(b"finetune-hpo") & 0x7FFFFFFF
_OWNER_NAMESPACE = zlib.crc32(b"finetune-hpo owner claims") & 0x7FFFFFFF


class _Lock:
    """Acquire with ``with``; ``release()`` may be called early and more than once.

    ``connection``: hold the PostgreSQL lock on it (it stays open) rather than on a new one.
    """

    def __init__(
        self,
        engine: Engine,
        namespace: int,
        key: int,
        suffix: str,
        connection: Connection | None = None,
    ) -> None:
        self.engine = engine
        self._key = (namespace, key)
        self._suffix = suffix
        self._borrowed = connection
        self._conn: Connection | None = None
        self._file: TextIO | None = None

    def __enter__(self) -> Self:
        url = make_url(str(self.engine.url))
        if url.get_backend_name() == "postgresql":
            self._conn = self._borrowed or self.engine.connect()
            self._conn.execute(select(func.pg_advisory_lock(*self._key)))
            self._conn.commit()
        else:
            path = Path(f"{url.database}.{self._suffix}.lock")
            self._file = path.open("a")
            fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    @property
    def connection(self) -> Connection | None:
        """The connection holding the lock (PostgreSQL), free for statements meanwhile."""
        return self._conn

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(select(func.pg_advisory_unlock(*self._key)))
                self._conn.commit()
            finally:
                if self._borrowed is None:
                    self._conn.close()
                self._conn = None
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __exit__(self, *_: object) -> None:
        self.release()


class StudyLock(_Lock):
    """Per study: held while a worker checks the budget and claims a trial."""

    def __init__(self, engine: Engine, study_id: int) -> None:
        super().__init__(engine, _NAMESPACE, study_id, f"study{study_id}")
        self.study_id = study_id


class OwnerLock(_Lock):
    """Per owner: held inside a study lock while a worker counts the owner's running trials
    against their quota and claims, so claims in two studies of one owner cannot both pass.
    Always taken after the study lock, never before: no two workers wait on each other."""

    def __init__(self, engine: Engine, owner: str, connection: Connection | None = None) -> None:
        key = owner_key(owner)
        super().__init__(engine, _OWNER_NAMESPACE, key, f"owner{key}", connection)
