"""The first configuration of a study: a known-good LoRA point, else the middle of the space.

A LoRA fine-tune trains well near a learning rate of 1e-4 (about 10x a full fine-tune's) and
rank 16 with alpha = 2 x rank, as plain LoRA; any other parameter starts at the middle of its
range (the geometric middle on a log scale), as Syne Tune's first configuration does. Each
value is snapped into its distribution. A prior value outside the searched range is dropped,
not clipped, and the middle taken instead: clipped, it put trial 0 on the range's edge (on
NMTLC the lowest learning rate of every task, 0.6-1.3% off the best).
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

LORA_PRIOR: dict[str, Any] = {"learning_rate": 1e-4, "lora_r": 16, "lora_method": "lora"}


def _wanted(name: str, chosen: dict[str, Any]) -> Any:
    if name == "lora_alpha":
        rank = chosen.get("lora_r", LORA_PRIOR["lora_r"])
        return 2 * rank if isinstance(rank, int | float) else None
    return LORA_PRIOR.get(name)


def _distance(a: float, b: float) -> float:
    """On a log scale where both are positive (rates and ranks), else plain."""
    return abs(math.log(a / b)) if a > 0 and b > 0 else abs(a - b)


def first_value(name: str, dist: BaseDistribution, chosen: dict[str, Any]) -> Any:
    """The value of ``name`` in the first configuration; ``chosen``: the values given so far
    (``lora_alpha`` follows ``lora_r``)."""
    wanted = _wanted(name, chosen)
    if isinstance(dist, CategoricalDistribution):
        numbers = [c for c in dist.choices if _number(c)]
        if len(numbers) < len(dist.choices):  # words: the prior's, else the middle as listed
            listed = [c for c in dist.choices if type(c) is type(wanted) and c == wanted]
            return listed[0] if listed else dist.choices[(len(dist.choices) - 1) // 2]
        ordered = sorted(numbers)
        if not _number(wanted) or not ordered[0] <= wanted <= ordered[-1]:
            return ordered[(len(ordered) - 1) // 2]
        target = wanted
        return min(ordered, key=lambda c: _distance(c, target))
    assert isinstance(dist, FloatDistribution | IntDistribution)
    low, high = dist.low, dist.high
    if not _number(wanted) or not low <= wanted <= high:  # dropped: the middle instead
        wanted = math.sqrt(low * high) if dist.log else (low + high) / 2
    value = min(max(wanted, low), high)
    if dist.step is not None:
        value = low + round((value - low) / dist.step) * dist.step
    return int(value) if isinstance(dist, IntDistribution) else float(value)


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
