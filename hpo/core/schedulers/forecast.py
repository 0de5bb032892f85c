"""The adaptive scheduler's trusted rungs, and continuation by forecast so the best is kept.

While new configurations may start it pauses and promotes as ``adaptive`` does (ASHA on the
rungs measured to rank like the end; plain search otherwise), and a paused configuration
also continues when the optimistic bound of its forecast final value (``hpo.core.forecast``,
fitted on the study's finished curves) beats the best final value so far. Once nothing new
may start (the budget is spent, or every point of a finite space was tried), every paused
configuration continues, in order of that bound: one whose early score ranked it out is
never lost, and the forecast decides how soon it is reached. Under a time or GPU-hour budget
(continuous spaces included) the same happens before it runs out: once the device seconds
left would not cover what runs, finishing every paused configuration and one whole new one
per worker, the paused ones continue to their end, best bound first, before anything new
starts (a bound can be wrong: any of them may be the best), and no new segment pauses where
no budget would be left to continue it.

Ties: equal forecasts rank on the tie-break curve (``Config.tie_at``); once the best final
sits at the metric's ceiling (a saturated generation metric: 1.0), nothing paused can beat
it, and only those already ahead on the tie-break (lower validation loss now than the
best's final) continue.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

from hpo.core.forecast import MIN_CURVES, Model, fit
from hpo.core.schedulers.adaptive import AdaptiveScheduler
from hpo.core.schedulers.base import Decision, Idle, Start
from hpo.core.schedulers.rungs import (
    Config,
    Continue,
    geometric_rungs,
    params_key,
    share_promotable,
)
from hpo.core.spec import (
    METRICS,
    AdaptiveSchedulerSpec,
    ForecastSchedulerSpec,
    SearchSpec,
    grid_size,
)


class ForecastScheduler(AdaptiveScheduler):
    def __init__(
        self,
        spec: ForecastSchedulerSpec,
        *,
        minimize: bool = True,
        size: int | None = None,
        ceiling: float | None = None,
    ) -> None:
        rungs = AdaptiveSchedulerSpec(
            min_steps=spec.min_steps,
            reduction_factor=spec.reduction_factor,
            min_agreement=spec.min_agreement,
            min_pairs=spec.min_pairs,
            audit_every=spec.audit_every or 1,  # unused: ``audits`` is the forecast's
        )
        super().__init__(rungs, minimize=minimize)
        self.quantile = spec.quantile
        self.audit_every = spec.audit_every
        self.candidates = geometric_rungs(spec.min_steps, spec.reduction_factor)
        self.size = size  # configurations in a finite space (None: unbounded)
        self.ceiling = ceiling  # the metric's best possible value (None: unbounded)

    def exhausted(self, configs: Sequence[Config]) -> bool:
        """Every configuration of a finite space started: a new one would be a repeat."""
        tried = {params_key(c) for c in configs if c.values or c.status != "stopped"}
        return self.size is not None and len(tried) >= self.size

    def pausing(self, configs: Sequence[Config]) -> tuple[int, ...]:
        """Where configurations pause now: the trusted rungs (ranked as ASHA does) and the
        candidate rungs with a forecast (judged by it: the stop rule)."""
        return tuple(sorted({*self.rungs(configs), *self.judgeable(configs)}))

    def judgeable(self, configs: Sequence[Config]) -> tuple[int, ...]:
        """The candidate rungs a forecast can judge from (a hook, with ``model_at``, for a
        forecast that learns from more curves than the study's own)."""
        return forecast_rungs(configs, self.candidates)

    def model_at(self, configs: Sequence[Config], step: int) -> Model | None:
        """The forecast from ``step``, fitted on the study's finished curves (a hook, as
        ``judgeable``)."""
        finished = [c.values for c in configs if c.final is not None]
        return fit(finished, step, quantile=self.quantile)

    def bounds(self, configs: Sequence[Config]) -> list[tuple[float | None, Config]]:
        """``forecast_bounds`` with this scheduler's forecasts (``model_at``)."""
        return forecast_bounds(
            configs,
            minimize=self.minimize,
            quantile=self.quantile,
            model_at=lambda step: self.model_at(configs, step),
        )

    def first_until(
        self, configs: Sequence[Config], rungs: tuple[int, ...] | None = None
    ) -> int | None:
        """The first ``MIN_CURVES`` run unpaused, for the forecast to learn from; the others
        pause at the first pausing rung, or the first candidate rung while no forecast
        exists yet (one still paused there without a forecast when a worker decides
        continues as from a dropped rung: ``next_work``)."""
        if self.audits(configs):
            return None
        rungs = (self.pausing(configs) if rungs is None else rungs) or self.candidates[:1]
        return rungs[0] if rungs else None

    def audits(self, configs: Sequence[Config]) -> bool:
        """The first ``MIN_CURVES``, then every ``audit_every``-th (if set) run unpaused."""
        unpaused = sum(c.unpaused and c.status != "stopped" for c in configs)
        every = self.audit_every
        return unpaused < MIN_CURVES or (every is not None and len(configs) % every == 0)

    def next_work(
        self, configs: Sequence[Config], *, can_start: bool, left: float | None = None
    ) -> Decision:
        decision = self._next_work(configs, can_start=can_start, left=left)
        if left is None or not isinstance(decision, Start | Continue) or decision.until is None:
            return decision
        # A segment that would pause where no budget is left to continue it runs to its end:
        # in the last stretch, or when reaching its rung takes more than its worker's share
        # of what is left (a timeout's wall-clock seconds).
        config = None
        if isinstance(decision, Continue):
            config = next(c for c in configs if c.number == decision.config)
        at = 0 if config is None else config.last_step
        to_rung = (decision.until - at) * seconds_per_step(configs, config)
        share = left / (1 + sum(c.status == "running" for c in configs))
        if self.last_stretch(configs, left) or to_rung >= share:
            return replace(decision, until=None)
        return decision

    def _next_work(
        self, configs: Sequence[Config], *, can_start: bool, left: float | None
    ) -> Decision:
        pausing = self.pausing(configs)
        if can_start and not self.exhausted(configs):
            held = (
                self.held(configs) if left is not None and self.last_stretch(configs, left) else []
            )
            if held:  # before anything new, what paused goes on to its end, best bound first
                return Continue(held[0].number, held[0].last_trial, None)
            # ASHA ranks those paused at a trusted rung, the forecast those at a rung it
            # judges from; one paused where neither is (yet) continues, as from a dropped rung.
            trusted = set(self.rungs(configs))
            judged = {
                c.number
                for c in configs
                if c.status == "paused" and c.paused_rung in pausing
                if c.paused_rung not in trusted
            }
            decision = super().next_work(
                [c for c in configs if c.number not in judged], can_start=True
            )
            if isinstance(decision, Continue):
                config = next(c for c in configs if c.number == decision.config)
                return replace(decision, until=_after(pausing, config.last_step))
            promoted = self.promoted(configs, judged, pausing)
            if promoted is not None:
                return promoted
            hopeful = self.hopeful(configs, pausing)
            if hopeful is not None:
                return hopeful
            return Start(self.first_until(configs, pausing))
        # Nothing new may start: the paused configurations whose bound beats the best
        # continue, best bound first; the others wait while anything runs (what ends may
        # be the best), then continue one at a time, so the best is never left paused.
        running = any(c.status == "running" for c in configs)
        hopeful = self.hopeful(configs, pausing)
        if hopeful is not None or running:
            return hopeful or Idle(done=False)
        ranked = self.bounds(configs)
        if ranked and not self.saturated(configs):
            return self._continue(ranked[0][1], pausing)
        return Idle(done=True)

    def promoted(
        self, configs: Sequence[Config], judged: set[int], pausing: tuple[int, ...]
    ) -> Continue | None:
        """ASHA's rule on the forecast final value instead of the rung's score: a paused
        configuration whose forecast ranks in the best ``1/reduction_factor`` of those that
        reached its rung continues (the most advanced first)."""
        ready = []
        for rung in sorted(
            {c.paused_rung for c in configs if c.number in judged and c.paused_rung}
        ):
            model = self.model_at(configs, rung)
            if model is None:
                continue
            ranked = forecast_ranks(configs, model, minimize=self.minimize)
            # equal forecasts (a saturated metric) rank on the tie-break at the rung
            key = {
                c.number: (ranked[c.number], c.tie_at(rung)) for c in configs if c.number in ranked
            }
            scores = sorted(key.values())
            for c in configs:
                if c.number in judged and c.paused_rung == rung and c.number in key:
                    rank = bisect.bisect_left(scores, key[c.number])
                    if share_promotable(
                        rank, len(scores), self.spec.reduction_factor, can_start=True
                    ):
                        ready.append((-rung, key[c.number], c.number, c))
        if not ready:
            return None
        return self._continue(min(ready)[3], pausing)

    def hopeful(
        self, configs: Sequence[Config], pausing: tuple[int, ...] | None = None
    ) -> Continue | None:
        """While new configurations may start: the paused configuration with the best
        forecast bound, if that bound beats the best final value so far."""
        pausing = self.pausing(configs) if pausing is None else pausing
        if self.saturated(configs):
            ahead = self.ahead_on_tie_break(configs)
            return self._continue(ahead[0], pausing) if ahead else None
        ranked = [(bound, c) for bound, c in self.bounds(configs) if bound is not None]
        if not ranked:
            return None
        bound, config = ranked[0]
        best = self.best(configs)
        if best is not None and bound >= best:
            return None
        return self._continue(config, pausing)

    def best(self, configs: Sequence[Config]) -> float | None:
        """The best final value so far, signed (lower is better); None before any."""
        sign = 1.0 if self.minimize else -1.0
        finals = [sign * c.final for c in configs if c.final is not None]
        return min(finals) if finals else None

    def saturated(self, configs: Sequence[Config]) -> bool:
        """The best final value is the metric's ceiling: nothing can beat it, only tie."""
        best = self.best(configs)
        sign = 1.0 if self.minimize else -1.0
        return self.ceiling is not None and best is not None and best == sign * self.ceiling

    def ahead_on_tie_break(self, configs: Sequence[Config]) -> list[Config]:
        """Once saturated: the paused configurations whose tie-break now is already below
        the best tie-break of those at the ceiling, lowest first."""
        best = self.best(configs)
        sign = 1.0 if self.minimize else -1.0
        ties = [c.tie for c in configs if c.final is not None and sign * c.final == best]
        bar = min((t for t in ties if t is not None), default=-math.inf)
        paused = [c for _, c in self.bounds(configs) if c.tie_at(c.last_step) < bar]
        return sorted(paused, key=lambda c: c.tie_at(c.last_step))

    def held(self, configs: Sequence[Config]) -> list[Config]:
        """The paused configurations a time or GPU-hour budget must leave room to finish
        (any may be the best: a forecast's bound can be wrong), best bound first; once the
        metric saturated, only those ahead on the tie-break."""
        if self.saturated(configs):
            return self.ahead_on_tie_break(configs)
        return [c for _, c in self.bounds(configs)]

    def last_stretch(self, configs: Sequence[Config], left: float) -> bool:
        """``left`` device seconds would not cover what runs (to its end), finishing what
        paused and one whole configuration more per worker (those running and the asking
        one: a paused one waits for a worker to free up): what paused goes on first, and a
        segment that paused now could never be continued (False before any configuration
        finished: no cost to go by)."""
        if self.best(configs) is None:
            return False
        fresh = Config(-1, {}, (), "running", -1, False)  # no step yet: the finished' rate
        running = [c for c in configs if c.status == "running"]
        need = sum(remaining_seconds(configs, c) for c in [*running, *self.held(configs)])
        return need + (len(running) + 1) * remaining_seconds(configs, fresh) >= left

    def _continue(self, config: Config, pausing: tuple[int, ...]) -> Continue:
        """Continue ``config`` up to its next pausing rung (None: to its end)."""
        return Continue(config.number, config.last_trial, _after(pausing, config.last_step))

    def done_reason(self, max_trials: int) -> str:
        return (
            f"max_trials={max_trials} configurations ran, or every point of the space did, "
            "and each ran to its end"
        )


def _after(rungs: Sequence[int], step: int) -> int | None:
    return next((r for r in rungs if r > step), None)


def remaining_seconds(configs: Sequence[Config], config: Config) -> float:
    """Device seconds to finish ``config``: its steps to the longest finished curve's end, at
    ``seconds_per_step``."""
    end = max((c.last_step for c in configs if c.final is not None), default=0)
    return max(end - config.last_step, 0) * seconds_per_step(configs, config)


def seconds_per_step(configs: Sequence[Config], config: Config | None) -> float:
    """``config``'s device seconds per step so far, else (none yet, or None: a new one) the
    finished configurations' (0 before any finished)."""
    if config is not None and config.seconds > 0 and config.last_step > 0:
        return config.seconds / config.last_step
    done = [c for c in configs if c.final is not None]
    return sum(c.seconds for c in done) / max(sum(c.last_step for c in done), 1)


def forecast_rungs(configs: Sequence[Config], candidates: Sequence[int]) -> tuple[int, ...]:
    """The candidate rungs a forecast can judge from: at least ``MIN_CURVES`` finished
    curves went past them."""
    ends = [c.last_step for c in configs if c.final is not None]
    return tuple(r for r in candidates if sum(end > r for end in ends) >= MIN_CURVES)


def forecast_ranks(configs: Sequence[Config], model: Model, *, minimize: bool) -> dict[int, float]:
    """The forecast final value (signed: lower is better) of each configuration that
    reached the model's step, by number; twins share their best."""
    sign = 1.0 if minimize else -1.0
    best: dict[tuple[tuple[str, object], ...], float] = {}
    for c in configs:
        if c.last_step < model.step:
            continue
        predicted = model.predict(c.values)
        if predicted is not None:
            key = params_key(c)
            best[key] = min(best.get(key, math.inf), sign * predicted.mean)
    return {
        c.number: best[params_key(c)]
        for c in configs
        if params_key(c) in best and c.last_step >= model.step
    }


def forecast_bounds(
    configs: Sequence[Config],
    *,
    minimize: bool,
    quantile: float,
    model_at: Callable[[int], Model | None] | None = None,
) -> list[tuple[float | None, Config]]:
    """Paused configurations, each with its forecast's optimistic bound (signed: lower is
    better), best first; None for one without a forecast (too few finished curves went past
    its step), which nothing rules out: those come first, the most advanced first.
    ``model_at(step)``: the forecast from a step (default: fitted on the finished curves)."""
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
            models[step] = model_at(step) if model_at else fit(finished, step, quantile=quantile)
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
        ceiling=METRICS[search.objective.metric].ceiling,
    )
