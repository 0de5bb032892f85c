"""ASHA on the rungs whose scores are measured to rank like final scores; none otherwise.

Configurations that ran to their end unpaused (the first ``min_pairs``, then every
``audit_every``-th) give, per candidate rung, the Spearman correlation between the score
there and the final score; a rung is used while the lower confidence bound of that
correlation is at least ``min_agreement``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hpo.core.schedulers.rungs import (
    Config,
    RungScheduler,
    geometric_rungs,
    params_key,
    share_promotable,
)
from hpo.core.spec import AdaptiveSchedulerSpec, SearchSpec

# One-sided 95% normal quantile: a rung is trusted on the lower bound of its agreement.
CONFIDENCE_Z = 1.645


class AdaptiveScheduler(RungScheduler):
    def __init__(self, spec: AdaptiveSchedulerSpec, *, minimize: bool = True) -> None:
        super().__init__(minimize=minimize)
        self.spec = spec

    def rungs(self, configs: Sequence[Config]) -> tuple[int, ...]:
        return trusted_rungs(configs, self.spec)

    def promotable(self, rank: int, scored: int, *, can_start: bool) -> bool:
        return share_promotable(rank, scored, self.spec.reduction_factor, can_start=can_start)

    def audits(self, configs: Sequence[Config]) -> bool:
        """The first ``min_pairs``, then every ``audit_every``-th run unpaused."""
        unpaused = sum(c.unpaused and c.status != "stopped" for c in configs)
        return unpaused < self.spec.min_pairs or len(configs) % self.spec.audit_every == 0


def build(search: SearchSpec) -> AdaptiveScheduler:
    assert isinstance(search.scheduler, AdaptiveSchedulerSpec)
    return AdaptiveScheduler(search.scheduler, minimize=search.objective.direction == "minimize")


@dataclass(frozen=True)
class Agreement:
    """How a rung's scores rank against final scores, over configurations that went past it
    unpaused: Spearman's rho, its lower confidence bound (None below ``min_pairs``) and n."""

    rung: int
    rho: float | None
    lower: float | None
    pairs: int


def rung_agreement(
    configs: Sequence[Config], rungs: Sequence[int], *, min_pairs: int
) -> list[Agreement]:
    """Agreement of each rung with the end, from complete configurations that ran unpaused
    (so no rung selected them) and went past the rung; a twin (same params) counts once."""
    distinct = {
        params_key(c): c for c in reversed(configs) if c.status == "complete" and c.unpaused
    }
    sample = list(distinct.values())
    out = []
    for rung in rungs:
        pairs = [
            (v, c.final)
            for c in sample
            if c.last_step > rung
            if (v := c.value_at(rung)) is not None and c.final is not None
        ]
        rho = spearman([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) > 2 else None
        lower = None
        if rho is not None and len(pairs) >= min_pairs:
            lower = fisher_lower_bound(rho, len(pairs))
        out.append(Agreement(rung, rho, lower, len(pairs)))
    return out


def trusted_rungs(configs: Sequence[Config], spec: AdaptiveSchedulerSpec) -> tuple[int, ...]:
    """The candidate rungs whose agreement's lower bound reaches ``min_agreement``: rank
    correlation does not depend on the direction of the objective."""
    candidates = geometric_rungs(spec.min_steps, spec.reduction_factor)
    longest = max((c.last_step for c in configs), default=0)
    agreements = rung_agreement(
        configs, [r for r in candidates if r < longest], min_pairs=spec.min_pairs
    )
    return tuple(
        a.rung for a in agreements if a.lower is not None and a.lower >= spec.min_agreement
    )


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is flat."""
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def fisher_lower_bound(rho: float, n: int) -> float:
    """One-sided 95% lower bound of Spearman's rho from ``n`` pairs (Fisher z with the
    Fieller-Hartley-Pearson variance 1.06 / (n - 3))."""
    z = math.atanh(max(-0.9999, min(0.9999, rho)))
    return math.tanh(z - CONFIDENCE_Z * math.sqrt(1.06 / (n - 3)))
