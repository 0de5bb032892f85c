"""One setting of a trial: its type, bounds, default, meaning and where it goes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

# trainer: transformers' TrainingArguments; sft: TRL's SFTConfig (causal LMs) on top of it;
# lora: PEFT's LoraConfig; adapter: which PEFT config and its budget (``peft_config``);
# data: the worker's tokenization; generation: GenerationConfig.
Target = Literal["trainer", "sft", "lora", "adapter", "data", "generation"]
Kind = type[float] | type[int] | type[str] | type[bool]


@dataclass(frozen=True)
class Hyperparameter:
    """One setting of a trial.

    Args:
        name: The name in specs (``search.space``, ``train.training``).
        kind: Its Python type.
        default: The value a trial uses when the study neither searches nor fixes it; None
            leaves the library's own default (or a rule in the worker, e.g. LoRA alpha = 2r).
        help: What it means, shown in the OpenAPI schema.
        target: Where the worker applies it.
        argument: Its name in ``TrainingArguments`` / ``LoraConfig`` when that differs.
        low, high, low_inclusive: Numeric bounds.
        choices: The accepted strings.
        searchable: Whether a study may put it in its search space (else fixed only).
        mutable: Whether PBT's explore may change it between two segments of a member
            (``PBT_MUTABLE``). It must not shape the saved state the next segment loads: a
            resumed segment builds its adapter from the new value, or sets it on the loaded
            optimiser (``worker.callbacks.Retune``).
    """

    name: str
    kind: Kind
    default: Any
    help: str
    target: Target
    argument: str | None = None
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    choices: tuple[str, ...] = ()
    searchable: bool = True
    mutable: bool = False

    @property
    def key(self) -> str:
        """The keyword the target library takes."""
        return self.argument or self.name

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable, or None when it is."""
        if self.kind is bool:
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if self.kind is str:
            ok = value in self.choices
            return None if ok else f"must be one of {list(self.choices)}, but got {value!r}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, but got {value!r}"
        if self.kind is int and not float(value).is_integer():
            return f"must be an integer, but got {value!r}"
        if not math.isfinite(value):
            return f"must be finite, but got {value!r}"
        if self.low is not None and (
            value < self.low or (not self.low_inclusive and value == self.low)
        ):
            return f"must be {'>=' if self.low_inclusive else '>'} {self.low}, but got {value!r}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high}, but got {value!r}"
        return None

    def cast(self, value: Any) -> Any:
        """``value`` as this setting's type (searched ints may arrive as floats)."""
        return value if value is None else self.kind(value)
