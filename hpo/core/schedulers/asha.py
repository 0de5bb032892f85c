"""Asynchronous successive halving whose promotions continue the paused trial.

Rungs lie at ``min_steps * reduction_factor**k`` steps; a configuration pauses at each, and
one in the best ``1/reduction_factor`` of those that reached its rung continues to the next.
"""

from __future__ import annotations

from collections.abc import Sequence

from hpo.core.schedulers.rungs import Config, RungScheduler, geometric_rungs, share_promotable
from hpo.core.spec import AshaSchedulerSpec, SearchSpec


class AshaScheduler(RungScheduler):
    def __init__(self, spec: AshaSchedulerSpec, *, minimize: bool = True) -> None:
        super().__init__(minimize=minimize)
        self.spec = spec
        self.cools_down = spec.cooldown
        self._rungs = geometric_rungs(spec.min_steps, spec.reduction_factor)

    def rungs(self, configs: Sequence[Config]) -> tuple[int, ...]:
        return self._rungs

    def promotable(self, rank: int, scored: int, *, can_start: bool) -> bool:
        return share_promotable(rank, scored, self.spec.reduction_factor, can_start=can_start)


def build(search: SearchSpec) -> AshaScheduler:
    assert isinstance(search.scheduler, AshaSchedulerSpec)
    return AshaScheduler(search.scheduler, minimize=search.objective.direction == "minimize")
