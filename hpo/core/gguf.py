"""A GGUF file's header, checked against the file's size before any library parses it.

The ``gguf`` reader transformers uses trusts the counts a header claims: a sparse file claiming
a string array of 2^28 items makes it walk (and allocate) for minutes. Here every count and
length is checked against the bytes left in the file, and the items walked in all against a
limit, so the check itself costs at most ``max_items`` small reads. Format:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (versions 2 and 3).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from hpo.core.files import open_regular

MAGIC = b"GGUF"
STRING, ARRAY = 8, 9
# Byte size of each fixed-size value type: uint8, int8, uint16, int16, uint32, int32, float32,
# bool, uint64, int64, float64.
FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
MAX_DIMS = 8
MAX_NESTING = 4  # arrays of arrays: deeper is no model's metadata, and would recurse


class BadGGUF(ValueError):
    """The file is not a GGUF file, or its header claims more than the file holds."""


class _Header:
    def __init__(self, f: BinaryIO, size: int, max_items: int, name: str) -> None:
        self.f, self.size, self.budget, self.name = f, size, max_items, name
        self.max_items = max_items

    def left(self) -> int:
        return self.size - self.f.tell()

    def take(self, fmt: str) -> int:
        raw = self.f.read(struct.calcsize(fmt))
        if len(raw) != struct.calcsize(fmt):
            raise BadGGUF(f"{self.name} ends inside its header.")
        value: int = struct.unpack(fmt, raw)[0]
        return value

    def spend(self, items: int, what: str) -> None:
        self.budget -= items
        if self.budget < 0:
            raise BadGGUF(
                f"{self.name} claims {items} items in {what}: more than the {self.max_items} "
                "its metadata may hold in all (HPO_GGUF_MAX_ITEMS)."
            )

    def fits(self, count: int, size: int, what: str) -> None:
        if count * size > self.left():
            raise BadGGUF(
                f"{self.name} claims {count} items in {what}, more than its "
                f"{self.size} bytes can hold."
            )

    def skip(self, length: int, what: str) -> None:
        self.fits(length, 1, what)
        self.f.seek(length, os.SEEK_CUR)

    def string(self, what: str) -> bytes:
        length = self.take("<Q")
        self.fits(length, 1, what)
        keep = self.f.read(min(length, 200))  # enough to name it in a message
        self.f.seek(length - len(keep), os.SEEK_CUR)
        return keep

    def value(self, kind: int, what: str, depth: int = 0) -> None:
        if kind in FIXED:
            self.skip(FIXED[kind], what)
        elif kind == STRING:
            self.skip(self.take("<Q"), what)
        elif kind == ARRAY and depth < MAX_NESTING:
            item, count = self.take("<I"), self.take("<Q")
            self.fits(count, FIXED.get(item, 8), what)  # a string or array takes 8 bytes at least
            if item in FIXED:
                self.f.seek(count * FIXED[item], os.SEEK_CUR)
                return
            self.spend(count, what)
            for _ in range(count):
                self.value(item, what, depth + 1)
        else:
            raise BadGGUF(
                f"{self.name} has a value of unknown type {kind} (or arrays nested "
                f"deeper than {MAX_NESTING}) in {what}."
            )


def check_gguf(path: str | Path, *, max_items: int) -> None:
    """Walk the header of the GGUF file ``path``: every count fits in the file, and at most
    ``max_items`` array items and tensors in all.

    Raises:
        BadGGUF: It is no GGUF file, or claims more than it holds or than allowed.
        NotRegularFile: It is a FIFO, device or the like.
    """
    name = Path(path).name
    with open_regular(path) as f:
        header = _Header(f, os.fstat(f.fileno()).st_size, max_items, name)
        if f.read(4) != MAGIC:
            raise BadGGUF(f"{name} is not a GGUF file.")
        version = header.take("<I")
        if version not in (2, 3):
            raise BadGGUF(f"{name} is GGUF version {version}; versions 2 and 3 are read.")
        tensors, entries = header.take("<Q"), header.take("<Q")
        header.fits(entries, 8 + 8 + 4, "its metadata")  # key length, key, type: 20 bytes
        header.spend(entries, "its metadata")
        for _ in range(entries):
            key = header.string("a metadata key").decode(errors="replace")
            header.value(header.take("<I"), f"metadata {key!r}")
        header.fits(tensors, 8 + 4 + 8 + 4 + 8, "its tensor list")  # one dimension at least
        header.spend(tensors, "its tensor list")
        for _ in range(tensors):
            header.string("a tensor name")
            dims = header.take("<I")
            if not 1 <= dims <= MAX_DIMS:
                raise BadGGUF(f"{name} has a tensor with {dims} dimensions.")
            header.skip(dims * 8 + 4 + 8, "a tensor")
