"""Warm start: the configurations a new study tries first, from earlier studies' results.

Pure: it sees the earlier studies' finished trials (params, final value, direction) and the
new study's space, never a database. Each source's trials are ranked by its own direction
(a loss and an accuracy study can both seed a new one), mapped into the new space (params it
does not search dropped, the source's fixed settings filled in for the ones it does, values
clipped and snapped into the new distributions), de-duplicated, and interleaved across
sources so one study cannot fill the queue. Only ``top_k`` of them run first; the sampler then
searches as usual with them in its history, which bounds what a misleading source can cost
(``bench/results/warm-start.md`` measures where it does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpo.core.spec import (
    CategoricalDistribution,
    Distribution,
    FloatDistribution,
    IntDistribution,
    SearchSpace,
)


@dataclass(frozen=True)
class SourceStudy:
    """An earlier study's finished trials: ``(params, final value)`` pairs."""

    name: str
    minimize: bool
    trials: Sequence[tuple[Mapping[str, Any], float]]
    # Values the source fixed for every trial (its ``train.training``): they fill the new
    # space's params the source did not search.
    fixed: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WarmConfig:
    """A configuration to try first and the study it came from."""

    params: dict[str, Any]
    source: str


def warm_start_configs(
    sources: Sequence[SourceStudy], space: SearchSpace, *, top_k: int
) -> list[WarmConfig]:
    """At most ``top_k`` configurations for ``space``: each source's best first, in turns.

    Round-robin over the sources (in the order given), each contributing its next best
    configuration not already taken once mapped into ``space``. A configuration that maps to
    nothing (no param in common) is skipped; a partial one is kept (the sampler fills the
    rest). Trials with a non-finite value never count.
    """
    dists = space.distributions()
    ranked = [_ranked(source, dists) for source in sources]
    picked: list[WarmConfig] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    cursors = [0] * len(ranked)
    while len(picked) < top_k and any(c < len(r) for c, r in zip(cursors, ranked, strict=True)):
        for i, configs in enumerate(ranked):
            while cursors[i] < len(configs) and len(picked) < top_k:
                params = configs[cursors[i]]
                cursors[i] += 1
                key = _key(params)
                if key not in seen:
                    seen.add(key)
                    picked.append(WarmConfig(params, sources[i].name))
                    break
    return picked


def _ranked(source: SourceStudy, dists: Mapping[str, Distribution]) -> list[dict[str, Any]]:
    finished = [(p, v) for p, v in source.trials if math.isfinite(v)]
    finished.sort(key=lambda pv: pv[1] if source.minimize else -pv[1])  # stable: earliest first
    out = []
    for params, _ in finished:
        mapped = map_params({**source.fixed, **params}, dists)
        if mapped:
            out.append(mapped)
    return out


def map_params(params: Mapping[str, Any], dists: Mapping[str, Distribution]) -> dict[str, Any]:
    """``params`` restricted to ``dists`` and snapped into them; a value that fits nowhere
    (a string absent from the choices, a non-number for a numeric range) is left out."""
    mapped = {}
    for name, dist in dists.items():
        if name in params:
            value = snap(params[name], dist)
            if value is not None:
                mapped[name] = value
    return mapped


def snap(value: Any, dist: Distribution) -> Any:
    """The value of ``dist`` nearest to ``value`` (on a log scale where the range is), or
    None when ``value`` is not comparable with it."""
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            if type(choice) is type(value) and choice == value:
                return choice
        numbers = [c for c in dist.choices if _number(c)]
        if not _number(value) or not numbers:
            return None
        log = value > 0 and all(c > 0 for c in numbers)
        return min(numbers, key=lambda c: abs(_scale(c, log) - _scale(value, log)))
    if not _number(value) or not math.isfinite(value):
        return None
    clipped = min(max(float(value), dist.low), dist.high)
    if isinstance(dist, IntDistribution):
        return dist.low + round((clipped - dist.low) / dist.step) * dist.step
    assert isinstance(dist, FloatDistribution)
    if dist.step is not None:
        steps = round((clipped - dist.low) / dist.step)
        return min(dist.low + steps * dist.step, dist.high)
    return clipped


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scale(value: float, log: bool) -> float:
    return math.log(value) if log else float(value)


def _key(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))
