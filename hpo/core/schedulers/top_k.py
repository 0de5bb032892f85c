"""Score every configuration at ``at_steps``, continue the best ``k`` to their end.

Asynchronous: once ``min_scored`` configurations were scored, a paused one continues when it
ranks among the ``k`` best scores so far (all of them once no new configuration may start).
"""

from __future__ import annotations

from collections.abc import Sequence

from hpo.core.schedulers.rungs import Config, RungScheduler
from hpo.core.spec import SearchSpec, TopKSchedulerSpec


class TopKScheduler(RungScheduler):
    def __init__(self, spec: TopKSchedulerSpec, *, minimize: bool = True) -> None:
        super().__init__(minimize=minimize)
        self.spec = spec
        self.cools_down = spec.cooldown

    def rungs(self, configs: Sequence[Config]) -> tuple[int, ...]:
        return (self.spec.at_steps,)

    def promotable(self, rank: int, scored: int, *, can_start: bool) -> bool:
        # Once no new configuration may start, no more arrive: the best k continue.
        return rank < self.spec.k and (scored >= self.spec.min_scored or not can_start)


def build(search: SearchSpec) -> TopKScheduler:
    assert isinstance(search.scheduler, TopKSchedulerSpec)
    return TopKScheduler(search.scheduler, minimize=search.objective.direction == "minimize")
