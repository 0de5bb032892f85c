"""The adaptive scheduler's trusted rungs, and continuation by forecast so the best is kept.

While new configurations may start it pauses and promotes as ``adaptive`` does (ASHA on the
rungs measured to rank like the end; plain search otherwise), and a paused configuration
also continues when the optimistic bound of its forecast final value (``hpo.core.forecast``,
fitted on the study's finished curves) beats the best final value so far. Once nothing new
may start (the budget is spent, or every point of a finite space was tried), paused
configurations continue in order of that bound while it beats the best, so one whose early
score ranked it out is not lost for good; then the study is done.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hpo.core.forecast import Model, fit
from hpo.core.schedulers.adaptive import trusted_rungs
from hpo.core.schedulers.base import Decision, Idle
from hpo.core.schedulers.rungs import (
    Config,
    Continue,
    RungScheduler,
    params_key,
    share_promotable,
)
from hpo.core.spec import (
    AdaptiveSchedulerSpec,
    ForecastSchedulerSpec,
    SearchSpec,
    grid_size,
)


class ForecastScheduler(RungScheduler):
    def __init__(
        self, spec: ForecastSchedulerSpec, *, minimize: bool = True, size: int | None = None
    ) -> None:
        super().__init__(minimize=minimize)
        self.spec = spec
        self.size = size  # configurations in a finite space (None: unbounded)
        self._rungs = AdaptiveSchedulerSpec(
            min_steps=spec.min_steps,
            reduction_factor=spec.reduction_factor,
            min_agreement=spec.min_agreement,
            min_pairs=spec.min_pairs,
            audit_every=spec.audit_every,
        )

    def rungs(self, configs: Sequence[Config]) -> tuple[int, ...]:
        return trusted_rungs(configs, self._rungs)

    def promotable(self, rank: int, scored: int, *, can_start: bool) -> bool:
        return share_promotable(rank, scored, self.spec.reduction_factor, can_start=can_start)

    def audits(self, configs: Sequence[Config]) -> bool:
        unpaused = sum(c.unpaused and c.status != "stopped" for c in configs)
        return unpaused < self.spec.min_pairs or len(configs) % self.spec.audit_every == 0

    def exhausted(self, configs: Sequence[Config]) -> bool:
        """Every configuration of a finite space started: a new one would be a repeat."""
        tried = {params_key(c) for c in configs if c.values or c.status != "stopped"}
        return self.size is not None and len(tried) >= self.size

    def next_work(self, configs: Sequence[Config], *, can_start: bool) -> Decision:
        fresh = can_start and not self.exhausted(configs)
        if fresh:
            decision = super().next_work(configs, can_start=True)
            if not isinstance(decision, Continue):
                return self.hopeful(configs, forecast_only=True) or decision
            return decision
        return self.hopeful(configs, forecast_only=False) or Idle(
            done=not any(c.status == "running" for c in configs)
        )

    def hopeful(self, configs: Sequence[Config], *, forecast_only: bool) -> Continue | None:
        """The paused configuration whose forecast's optimistic bound is best, if that bound
        beats the best final value so far (or nothing finished yet). ``forecast_only``: skip
        those with no forecast (while new configurations may start, rungs rank them)."""
        ranked = forecast_bounds(configs, minimize=self.minimize, quantile=self.spec.quantile)
        ranked = [(b, c) for b, c in ranked if b is not None or not forecast_only]
        if not ranked:
            return None
        bound, config = ranked[0]
        sign = 1.0 if self.minimize else -1.0
        finals = [sign * c.final for c in configs if c.final is not None]
        if bound is not None and finals and bound >= min(finals):
            return None
        rungs = self.rungs(configs)
        until = next((r for r in rungs if r > config.last_step), None)
        return Continue(config.number, config.last_trial, until)


def forecast_bounds(
    configs: Sequence[Config], *, minimize: bool, quantile: float
) -> list[tuple[float | None, Config]]:
    """Paused configurations, each with its forecast's optimistic bound (signed: lower is
    better), best first; None for one without a forecast (too few finished curves went past
    its step), which nothing rules out: those come first, the most advanced first."""
    sign = 1.0 if minimize else -1.0
    finished = [c.values for c in configs if c.final is not None]
    seen = {params_key(c) for c in configs if c.status in ("running", "complete")}
    models: dict[int, Model | None] = {}  # one fit per step paused configurations are at
    out = []
    for c in configs:
        if c.status != "paused" or params_key(c) in seen or not c.values:
            continue
        step = c.last_step
        if step not in models:
            models[step] = fit(finished, step, quantile=quantile)
        model = models[step]
        predicted = None if model is None else model.predict(c.values)
        bound = None
        if predicted is not None:
            bound = sign * (predicted.low if minimize else predicted.high)
        out.append((-math.inf if bound is None else bound, -step, c.number, bound, c))
    out.sort(key=lambda item: item[:3])
    return [(bound, c) for _, _, _, bound, c in out]


def build(search: SearchSpec) -> ForecastScheduler:
    assert isinstance(search.scheduler, ForecastSchedulerSpec)
    return ForecastScheduler(
        search.scheduler,
        minimize=search.objective.direction == "minimize",
        size=grid_size(search.space),
    )
