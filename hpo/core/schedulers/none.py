"""No scheduler: every configuration runs to its end (stop-only pruners may still stop it)."""

from __future__ import annotations

from collections.abc import Sequence

from hpo.core.schedulers.rungs import Config, RungScheduler
from hpo.core.spec import SearchSpec


class NoScheduler(RungScheduler):
    """Nothing pauses: the budget counts finished trials, not decisions."""

    pauses = False

    def rungs(self, configs: Sequence[Config]) -> tuple[int, ...]:
        return ()

    def done_reason(self, max_trials: int) -> str:
        return f"max_trials={max_trials} reached"


def build(search: SearchSpec) -> NoScheduler:
    return NoScheduler(minimize=search.objective.direction == "minimize")
