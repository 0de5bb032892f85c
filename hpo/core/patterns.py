"""Regular expressions from specs, matched in linear time.

Python's ``re`` backtracks: ``(a+)+b`` against a run of ``a``s takes exponential time, and
holds the GIL all along (heartbeats stop, signals wait). RE2 matches in time linear in the text
and refuses what it cannot do so (backreferences, lookaround): a pattern it refuses is refused
at registration. The text matched is capped too, so a score costs at most that many steps.
"""

from __future__ import annotations

from typing import Any

import re2

MAX_PATTERN_CHARS = 512
MAX_MATCHED_CHARS = 100_000


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is the client's error, not a log line
    return options


def compile_pattern(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (``search``, ``groups`` and ``group`` as ``re`` has them).

    Raises:
        ValueError: RE2 refuses it; the message says why.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"pattern is longer than {MAX_PATTERN_CHARS} characters.")
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise ValueError(
            f"pattern is not a regular expression RE2 can match in linear time ({reason}); "
            "backreferences and lookaround are not supported."
        ) from None


def bounded(text: str) -> str:
    """The part of ``text`` a pattern is matched against."""
    return text[:MAX_MATCHED_CHARS]
