"""A per-study lock held while a worker checks the budget and claims a trial.

PostgreSQL: a session advisory lock, visible to every node. SQLite (the one-machine demo):
an ``flock`` on a file beside the database.
"""

from __future__ import annotations

import fcntl
import zlib
from pathlib import Path
from typing import TextIO

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.engine import make_url

_NAMESPACE = zlib.crc32(b"finetune-hpo") & 0x7FFFFFFF


class StudyLock:
    """Acquire with ``with``; ``release()`` may be called early and more than once."""

    def __init__(self, engine: Engine, study_id: int) -> None:
        self.engine = engine
        self.study_id = study_id
        self._conn: Connection | None = None
        self._file: TextIO | None = None

    def __enter__(self) -> StudyLock:
        url = make_url(str(self.engine.url))
        if url.get_backend_name() == "postgresql":
            self._conn = self.engine.connect()
            self._conn.execute(select(func.pg_advisory_lock(_NAMESPACE, self.study_id)))
            self._conn.commit()
        else:
            path = Path(f"{url.database}.study{self.study_id}.lock")
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
                self._conn.execute(select(func.pg_advisory_unlock(_NAMESPACE, self.study_id)))
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __exit__(self, *_: object) -> None:
        self.release()
