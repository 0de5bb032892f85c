"""Warm start: the configurations a new study tries first, from earlier studies' results.

Pure: it sees the earlier studies' finished trials (params, final value, direction) and the
new study's space, never a database. Each source's trials are ranked by its own direction
(a loss and an accuracy study can both seed a new one), mapped into the new space (params it
does not search dropped, the source's fixed settings filled in for the ones it does, values
clipped and snapped into the new distributions), de-duplicated, and interleaved across
sources so one study cannot fill the queue. Only ``top_k`` of them run first; the sampler then
searches as usual with them in its history, which bounds what a misleading source can cost
(``bench/results/warm-start.md`` measures where it does).

``consensus_ranking`` orders every configuration the sources tried by their weighted mean
normalised rank: the trials a warm-started study starts before its first result follow it
(``hpo.core.transfer``), and its TPE takes it as a prior (``hpo.core.prior_tpe``).
``agreement`` / ``transfer_trusted`` measure whether the new study's results still agree with
that ranking; only the benchmark's candidates use them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpo.core.schedulers.adaptive import spearman
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
    # Each trial's tie-break score (``records.tie_break``, lower better; None: none), in the
    # order of ``trials``: among equal values the lower ranks first.
    ties: Sequence[float | None] = ()


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
                key = config_key(params)
                if key not in seen:
                    seen.add(key)
                    picked.append(WarmConfig(params, sources[i].name))
                    break
    return picked


def _ranked(
    source: SourceStudy, dists: Mapping[str, Distribution], *, clip: bool = True
) -> list[dict[str, Any]]:
    ties = [*source.ties, *[None] * (len(source.trials) - len(source.ties))]
    finished = [
        (p, v if source.minimize else -v, math.inf if t is None else t)
        for (p, v), t in zip(source.trials, ties, strict=False)
        if math.isfinite(v)
    ]
    finished.sort(key=lambda pvt: pvt[1:])  # stable: earliest first among full ties
    out = []
    for params, _, _ in finished:
        mapped = map_params({**source.fixed, **params}, dists, clip=clip)
        if mapped:
            out.append(mapped)
    return out


def map_params(
    params: Mapping[str, Any], dists: Mapping[str, Distribution], *, clip: bool = True
) -> dict[str, Any]:
    """``params`` restricted to ``dists`` and snapped into them; a value that fits nowhere
    (a string absent from the choices, a non-number for a numeric range) is left out, and
    without ``clip`` so is a number outside the range (or beyond the numeric choices)."""
    mapped = {}
    for name, dist in dists.items():
        if name in params and (clip or _inside(params[name], dist)):
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


def _inside(value: Any, dist: Distribution) -> bool:
    """Whether a number lies within ``dist``'s range (its numeric choices' span); anything
    else is for ``snap`` to judge."""
    if not _number(value):
        return True
    if isinstance(dist, CategoricalDistribution):
        numbers = [c for c in dist.choices if _number(c)]
        return not numbers or min(numbers) <= value <= max(numbers)
    return dist.low <= value <= dist.high


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scale(value: float, log: bool) -> float:
    return math.log(value) if log else float(value)


def config_key(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """``params`` as a hashable key: equal configurations share it."""
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


# The guard: transfer is trusted until this many of the new study's finished configurations
# have a counterpart in the sources' ranking, then only while their rank correlation is at
# least TRUST_THRESHOLD (a positive one: the sources order the new task's configurations
# better than a coin would). Chosen before measuring, not fitted to a table.
MIN_PAIRS = 4
TRUST_THRESHOLD = 0.0
# Configurations of the ranking a study keeps: more than the workers that start at once.
RANKING_LIMIT = 64


@dataclass(frozen=True)
class Ranked:
    """A configuration the sources tried, mapped into the new space, and its score: the mean
    over the sources that tried it of its normalised rank there (0 their best, 1 their worst)."""

    params: dict[str, Any]
    score: float


def consensus_ranking(sources: Sequence[SourceStudy], space: SearchSpace) -> list[Ranked]:
    """Every configuration the sources tried, best consensus first (ties: first seen first),
    a value outside the new space's range left out (the configuration then partial).

    Each source's normalised ranks count with weight ``1 / (i + 1)`` for the i-th source as
    listed (nearest first): a configuration good on all the related tasks ranks above one
    that one task alone liked, and the nearest tasks count most.
    """
    dists = space.distributions()
    sums: dict[tuple[tuple[str, str], ...], list[float]] = {}  # key -> [weighted, weights]
    params_of: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for i, source in enumerate(sources):
        # a source's value outside the new range is dropped, not clipped: clipped, a prior
        # fitted to the ranking (``hpo.core.prior_tpe``) would favour the range's edge
        ranked = _ranked(source, dists, clip=False)
        ranks: dict[tuple[tuple[str, str], ...], float] = {}
        for position, params in enumerate(ranked):
            # a configuration the source tried twice counts at its better rank
            ranks.setdefault(config_key(params), position / max(len(ranked) - 1, 1))
            params_of.setdefault(config_key(params), params)
        for key, normalised in ranks.items():
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] += normalised / (i + 1)
            acc[1] += 1 / (i + 1)
    score = {key: weighted / weights for key, (weighted, weights) in sums.items()}
    return [Ranked(params_of[k], score[k]) for k in sorted(score, key=score.__getitem__)]


def consensus_configs(
    sources: Sequence[SourceStudy], space: SearchSpace, *, top_k: int
) -> list[WarmConfig]:
    """The ``top_k`` best of ``consensus_ranking``, to try first."""
    names = ",".join(s.name for s in sources)
    return [WarmConfig(r.params, names) for r in consensus_ranking(sources, space)[:top_k]]


def agreement(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Spearman's rank correlation of ``(source score, new study's value)`` pairs (both lower
    is better), or None when either side has fewer than two distinct values."""
    if len({s for s, _ in pairs}) < 2 or len({v for _, v in pairs}) < 2:
        return None
    return spearman([s for s, _ in pairs], [v for _, v in pairs])


def transfer_trusted(
    pairs: Sequence[tuple[float, float]],
    *,
    min_pairs: int = MIN_PAIRS,
    threshold: float = TRUST_THRESHOLD,
) -> bool:
    """Whether the new study's results so far still agree with the sources' ranking."""
    if len(pairs) < min_pairs:
        return True
    rho = agreement(pairs)
    return rho is None or rho >= threshold


def next_transfer(
    ranking: Sequence[Ranked],
    done: Sequence[tuple[Mapping[str, Any], float]],
    tried: Sequence[Mapping[str, Any]],
    *,
    minimize: bool,
    min_pairs: int = MIN_PAIRS,
    threshold: float = TRUST_THRESHOLD,
    blind_only: bool = False,
    skip: int = 0,
) -> dict[str, Any] | None:
    """The configuration the new study should try next from the sources' ranking, or None
    to let its own sampler choose (the guard has stopped trusting transfer, or every ranked
    configuration was tried).

    ``done``: the new study's completed ``(params, value)``; ``tried``: params of all its
    other trials (running, failed, pruned too: a configuration that failed is not proposed
    again). Pairs for the guard are the completed configurations the ranking holds.
    ``blind_only``: transfer only while the new study has no result of its own (the trials
    that start together on many workers), then leave every choice to its sampler. ``skip``:
    how many untried configurations to pass over (those that earlier trials, started but
    with no params yet, are taking), so that workers starting together take distinct ones.
    """
    if blind_only and done:
        return None
    if not ranking:
        return None
    names = ranking[0].params.keys()

    def key(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        return config_key({n: params[n] for n in names if n in params})

    score = {key(r.params): r.score for r in ranking}
    pairs = [
        (score[key(p)], v if minimize else -v)
        for p, v in done
        if key(p) in score and math.isfinite(v)
    ]
    if not transfer_trusted(pairs, min_pairs=min_pairs, threshold=threshold):
        return None
    seen = {key(p) for p, _ in done} | {key(p) for p in tried}
    untried = [dict(r.params) for r in ranking if key(r.params) not in seen]
    return untried[skip] if skip < len(untried) else None
