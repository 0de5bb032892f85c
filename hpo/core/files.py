"""Reading files a tenant controls without letting them stall the reader.

A FIFO, a socket or a device under a data root blocks ``open()`` or ``read()`` until someone
writes to it, holding the thread (and whatever it holds: a pooled database connection, a
trial). So every file is opened with ``O_NONBLOCK`` (opening a FIFO then returns at once),
checked with ``fstat`` to be a regular file (the descriptor, not the name, so a swap between
the check and the read changes nothing), and read only up to a bound. Data files are streamed
through ``check_rows`` first, so a row longer than its bound is refused after that many bytes,
before a parser holds it whole.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 2**20


class NotRegularFile(ValueError):
    """A path names a FIFO, socket, device (or folder) where a regular file was expected."""


class RowTooLong(ValueError):
    """A data file's row (a JSONL line, a CSV row) holds more bytes than allowed.

    Args:
        row: Its number, counting from 1 (a CSV's header is row 1).
        limit: The bound it passed.
    """

    def __init__(self, row: int, limit: int) -> None:
        super().__init__(f"row {row} is longer than {limit} bytes")
        self.row = row
        self.limit = limit


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


# A quoted CSV field as pandas and Python's csv read it (RFC 4180): it opens only at a field's
# start (the row's, or after a comma); inside, a doubled quote is a quote and a single one
# closes it. One the buffer cuts runs to its end. Possessive: linear, never backtracking.
_QUOTED_FIELD = re.compile(rb'(?:^|(?<=[,\n]))"(?:[^"]++|"")*+(?:"|\Z)')


def _refuse_past(lengths: list[int], limit: int, row: int) -> None:
    """RowTooLong for the first of these rows (the first is ``row``) longer than ``limit``."""
    if lengths and max(lengths) > limit:
        raise RowTooLong(row + next(i for i, n in enumerate(lengths) if n > limit), limit)


def _hide_newlines(field: re.Match[bytes]) -> bytes:
    return field[0].replace(b"\n", b"\r")  # the same length: offsets stay


def check_rows(chunks: Iterable[bytes], limit: int, *, quoted: bool = False) -> None:
    """Raise RowTooLong at the first row of more than ``limit`` bytes, as soon as the chunks
    read so far show it (a row's newline not counted).

    A row ends at a newline; with ``quoted`` (CSV) only at one outside a quoted field. The
    unfinished row at a chunk's end is parsed again with the next chunk (it holds at most
    ``limit`` bytes), so a field a chunk cuts is read whole.
    """
    row, pending = 1, b""
    for chunk in chunks:
        buffer = pending + chunk
        flat = _QUOTED_FIELD.sub(_hide_newlines, buffer) if quoted and b'"' in buffer else buffer
        *ends, rest = flat.split(b"\n")
        _refuse_past(list(map(len, ends)), limit, row)
        row += len(ends)
        if len(rest) > limit:
            raise RowTooLong(row, limit)
        pending = buffer[len(buffer) - len(rest) :]


def check_file_rows(path: str | Path, limit: int, *, quoted: bool = False) -> None:
    """``check_rows`` over the regular file ``path``, streamed in 1 MB chunks."""
    with open_regular(path) as f:
        check_rows(iter(lambda: f.read(CHUNK_BYTES), b""), limit, quoted=quoted)
