"""Reading files a tenant controls without letting them stall the reader.

A FIFO, a socket or a device under a data root blocks ``open()`` or ``read()`` until someone
writes to it, holding the thread (and whatever it holds: a pooled database connection, a
trial). So every file is opened with ``O_NONBLOCK`` (opening a FIFO then returns at once),
checked with ``fstat`` to be a regular file (the descriptor, not the name, so a swap between
the check and the read changes nothing), and read only up to a bound.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


class NotRegularFile(ValueError):
    """A path names a FIFO, socket, device (or folder) where a regular file was expected."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_regular(path: str | Path) -> None:
    """Raise NotRegularFile unless ``path`` (symlinks followed) is a regular file.

    ``stat`` never blocks, whatever the file is.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(f"{Path(path).name} is {_kind(mode)}, not a regular file.")


@contextmanager
def open_regular(path: str | Path) -> Iterator[BinaryIO]:
    """``path`` opened for binary reading, only if it is a regular file.

    Raises:
        NotRegularFile: It is anything else; checked on the open descriptor.
        OSError: It cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{Path(path).name} is {_kind(mode)}, not a regular file.")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:  # O_NONBLOCK changes nothing for a regular file
        yield f


def read_head(path: str | Path, limit: int) -> bytes:
    """At most ``limit`` bytes from the start of the regular file ``path``."""
    with open_regular(path) as f:
        return f.read(limit)


def read_whole(path: str | Path, limit: int) -> bytes:
    """The whole regular file ``path``.

    Raises:
        ValueError: It holds more than ``limit`` bytes (metadata that large is not metadata).
    """
    data = read_head(path, limit + 1)
    if len(data) > limit:
        raise ValueError(f"{Path(path).name} is larger than {limit} bytes.")
    return data
