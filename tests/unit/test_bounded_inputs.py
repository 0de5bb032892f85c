"""The pure helpers that bound work on a tenant's inputs (issue 20): regular files read
non-blocking and bounded, GGUF headers checked against the file, RE2 patterns, the deadline."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpo.core.files import (
    NotRegularFile,
    RowTooLong,
    check_file_rows,
    check_rows,
    read_head,
    read_whole,
)
from hpo.core.gguf import MAX_NESTING, BadGGUF, check_gguf
from hpo.core.patterns import MAX_MATCHED_CHARS, bounded, compile_pattern
from worker.deadline import Overrun, deadline
from worker.metrics import regex_match


def test_fifos_are_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")  # no writer: a plain open() would block forever
    with pytest.raises(NotRegularFile, match="pipe is a FIFO"):
        read_head(tmp_path / "pipe", 10)
    with pytest.raises(NotRegularFile, match="is a folder"):
        read_head(tmp_path, 10)


def test_reads_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 100)
    assert read_head(path, 10) == b"x" * 10
    assert read_whole(path, 100) == b"x" * 100
    with pytest.raises(ValueError, match="larger than 99 bytes"):
        read_whole(path, 99)


def _string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _gguf(path: Path, *entries: bytes, tensors: int = 0, size: int | None = None) -> Path:
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, tensors, len(entries)) + b"".join(entries))
    if size is not None:
        os.truncate(path, size)
    return path


def _array(key: bytes, item: int, count: int, items: bytes = b"") -> bytes:
    return _string(key) + struct.pack("<IIQ", 9, item, count) + items


def test_a_gguf_header_that_fits_passes(tmp_path: Path) -> None:
    tokens = b"".join(_string(t) for t in (b"a", b"bc", b"d"))
    scores = struct.pack("<3f", 0.0, 1.0, 2.0)
    version = _string(b"general.version") + struct.pack("<I", 8) + _string(b"v1")
    _gguf(
        tmp_path / "ok.gguf",
        _array(b"tokens", 8, 3, tokens),
        _array(b"scores", 6, 3, scores),
        version,
    )
    check_gguf(tmp_path / "ok.gguf", max_items=6)  # 3 entries, 3 strings; floats are skipped


def test_gguf_counts_beyond_the_file_or_the_limit_are_refused(tmp_path: Path) -> None:
    sparse = _gguf(tmp_path / "sparse.gguf", _array(b"tokens", 8, 2**28), size=2**31)
    with pytest.raises(BadGGUF, match="claims 268435456 items in metadata 'tokens'"):
        check_gguf(sparse, max_items=2**40)  # the size alone refuses it
    floats = _gguf(tmp_path / "floats.gguf", _array(b"scores", 6, 2**40))
    with pytest.raises(BadGGUF, match="can hold"):
        check_gguf(floats, max_items=2**40)
    tokens = b"".join(_string(b"t") for _ in range(5))
    many = _gguf(tmp_path / "many.gguf", _array(b"tokens", 8, 5, tokens))
    check_gguf(many, max_items=6)  # the entry and its 5 items
    with pytest.raises(BadGGUF, match="HPO_GGUF_MAX_ITEMS"):
        check_gguf(many, max_items=5)
    tensors = _gguf(tmp_path / "tensors.gguf", tensors=2**30)
    with pytest.raises(BadGGUF, match="tensor list"):
        check_gguf(tensors, max_items=2**40)


def test_malformed_ggufs_are_refused(tmp_path: Path) -> None:
    (tmp_path / "text.gguf").write_text("not a model")
    with pytest.raises(BadGGUF, match="not a GGUF file"):
        check_gguf(tmp_path / "text.gguf", max_items=10)
    (tmp_path / "cut.gguf").write_bytes(b"GGUF" + struct.pack("<I", 3))  # no counts
    with pytest.raises(BadGGUF, match="ends inside its header"):
        check_gguf(tmp_path / "cut.gguf", max_items=10)
    no_value = _gguf(tmp_path / "no-value.gguf", _string(b"k" * 12))  # no type, no value
    with pytest.raises(BadGGUF, match="ends inside its header"):
        check_gguf(no_value, max_items=10)
    nested = struct.pack("<IQ", 9, 1) * (MAX_NESTING + 2)  # arrays of one array, and so on
    deep = _gguf(tmp_path / "deep.gguf", _string(b"k") + struct.pack("<I", 9) + nested)
    os.truncate(deep, 1024)
    with pytest.raises(BadGGUF, match="nested"):
        check_gguf(deep, max_items=100)
    os.mkfifo(tmp_path / "pipe.gguf")
    with pytest.raises(NotRegularFile):
        check_gguf(tmp_path / "pipe.gguf", max_items=10)


def test_patterns_run_on_re2() -> None:
    catastrophic = regex_match("(a+)+b")  # exponential on Python's re, linear on RE2
    assert catastrophic("a" * 36, "a" * 36) == 0.0
    assert regex_match(r"answer: (\d+)")("so the answer: 42.", "answer: 42") == 1.0
    for refused in (r"(a)\1", r"(?<=a)b", "("):
        with pytest.raises(ValueError, match="RE2"):
            compile_pattern(refused)
    assert len(bounded("x" * (MAX_MATCHED_CHARS + 5))) == MAX_MATCHED_CHARS


def test_the_deadline_stops_a_python_loop() -> None:
    """What a looping chat template does: Python that never returns, holding the GIL."""
    with pytest.raises(Overrun, match="spinning took longer"), deadline(0.05, "spinning"):
        while True:
            pass
    with deadline(60, "quick"):
        assert sum(range(10)) == 45  # the timer is off again once the block ends


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 3, 7, 1 << 20])
def test_rows_within_the_bound_pass_in_any_chunking(size: int) -> None:
    jsonl = b'{"text": "ab"}\n' * 5 + b'{"text": "end"}'  # 14 bytes a row, then 15
    check_rows(_chunks(jsonl, size), 15)
    with pytest.raises(RowTooLong, match="row 6 is longer than 14 bytes"):
        check_rows(_chunks(jsonl, size), 14)
    csv = b'text,label\n"a\nb ""q""",1\nplain,0\n'  # row 2: 13 bytes with its quoted newline
    check_rows(_chunks(csv, size), 13, quoted=True)
    with pytest.raises(RowTooLong, match="row 2 is longer than 12 bytes"):
        check_rows(_chunks(csv, size), 12, quoted=True)
    check_rows(_chunks(csv, size), 10)  # as lines, not rows, none is longer than 10
    inches = b'text,label\n5" screen,1\n' + b"ok,0\n" * 20  # a quote mid-field is a quote
    check_rows(_chunks(inches, size), 12, quoted=True)
    quoted = b'a,"b\n,""\n"",c\n"\n' + b"x,1\n"  # row 1 ends at the last quote: 15 bytes
    check_rows(_chunks(quoted, size), 15, quoted=True)
    with pytest.raises(RowTooLong, match="row 1 "):
        check_rows(_chunks(quoted, size), 14, quoted=True)


def test_a_long_row_is_refused_as_soon_as_it_passes_the_bound() -> None:
    """Checked while reading: a row that never ends is refused after the bound, not read
    to its end (an endless stream of chunks would never end the check otherwise)."""

    def endless(first: bytes) -> Iterator[bytes]:
        yield first
        while True:
            yield b"a" * 1000

    with pytest.raises(RowTooLong) as refused:
        check_rows(endless(b'{"text": "a"}\n' * 3 + b'{"text": "'), 4096)
    assert refused.value.row == 4
    with pytest.raises(RowTooLong, match="row 2 "):
        check_rows(endless(b'text\n"'), 4096, quoted=True)


def test_a_file_with_a_long_row_is_refused_after_reading_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "wide.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "')
    os.truncate(path, 64 * 2**20)  # sparse: 64 MB on the second line
    with pytest.raises(RowTooLong, match="row 2 is longer than 2097152 bytes"):
        check_file_rows(path, 2 * 2**20)
    check_file_rows(path, 64 * 2**20)  # under a higher bound it passes, read to its end
