"""What every part of the spec shares: strict frozen models, bounds, names and the unknown-key
error with a suggestion."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Scalar = bool | int | float | str | None
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
PATH_PATTERN = r"^[^\x00]+$"  # no NUL: the OS refuses it in any path
MAX_TRIALS = 100_000
MAX_GRID_SIZE = 100_000
MAX_STEP = 10**12  # steps are training examples seen; far beyond any fine-tune


class Strict(BaseModel):
    """A part of the spec: unknown keys are an error, and a validated spec never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def refuse_unknown(kind: str, names: Iterable[str], known: Iterable[str]) -> None:
    """Raise ValueError naming the first unknown name and the closest known one."""
    unknown = sorted(set(names) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown {kind} {unknown[0]!r}; {hint}known ones are {sorted(known)}.")
