"""A learning-curve forecast for a warm-started study, learnt from earlier studies' curves.

``hpo.core.forecast`` learns from the study's own finished curves and needs ``MIN_CURVES`` of
them. Related tasks share how their curves bend (NMTLC: the score at a ninth of training
ranks against the final one on every one of its 10 tasks, Spearman -0.11 .. -0.93) but not
their level (final log-perplexity 0.88 .. 1.21), so the forecast is fitted *within* each
earlier study: features and final values less that study's means, one ridge fit over all
of them. For the new study, a configuration's forecast is its features' distance from the
mean of the study's own configurations that reached the step, times those coefficients,
plus a level read off the study's own finished curves (their final value less their
forecast's distance; the earlier studies' mean level while it has none, which only ranks).

Pure numpy, bounded: at most ``MAX_SOURCES`` studies of at most ``MAX_SOURCE_CURVES`` curves.
A benchmark candidate (``bench.warm_start``'s ``+ forecast, source curves``), measured and not
kept for the service: see README "Search defaults".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hpo.core.forecast import MIN_CURVES, RIDGE, Curve, Model, features, value_at
from hpo.core.schedulers.forecast import ForecastScheduler
from hpo.core.schedulers.rungs import Config
from hpo.core.spec import ForecastSchedulerSpec

MAX_SOURCES = 8
MAX_SOURCE_CURVES = 64  # per earlier study
MIN_PER_SOURCE = 3  # fewer curves past the step: that study says nothing within itself


def _past(curves: Sequence[Curve], step: int) -> list[Curve]:
    return [c for c in curves if c and c[-1][0] > step]


def transfer_fit(
    sources: Sequence[Sequence[Curve]],
    own: Sequence[Curve],
    own_finished: Sequence[Curve],
    step: int,
    *,
    quantile: float = 0.1,
) -> Model | None:
    """The forecast from ``step`` learnt within each of the ``sources`` (each one earlier
    study's finished curves), placed on the new study's level: ``own`` are its curves (any
    state) whose features centre the prediction, ``own_finished`` those that ended (their
    final values set the level). None when fewer than ``MIN_CURVES`` source curves in
    studies with at least ``MIN_PER_SOURCE`` went past ``step``, or no own curve reached it."""
    groups = [_past(s[:MAX_SOURCE_CURVES], step) for s in sources[:MAX_SOURCES]]
    groups = [g for g in groups if len(g) >= MIN_PER_SOURCE]
    if sum(len(g) for g in groups) < MIN_CURVES:
        return None
    horizon = int(np.median([c[-1][0] for g in groups for c in g]))
    xs, ys = [], []
    for g in groups:
        x = np.array([features(c, step, horizon) for c in g], dtype=float)
        y = np.array([c[-1][1] for c in g], dtype=float)
        xs.append(x - x.mean(axis=0))
        ys.append(y - y.mean())
    x, y = np.vstack(xs), np.concatenate(ys)
    sd = x.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    design = x / sd
    inverse = np.linalg.inv(design.T @ design + RIDGE * np.eye(design.shape[1]))
    coef = inverse @ design.T @ y
    leverage = np.einsum("ij,jk,ik->i", design, inverse, design)
    residuals = (y - design @ coef) / np.maximum(1.0 - leverage, 1e-3)
    widen = len(y) / max(len(y) - design.shape[1] - len(groups), 1)
    lo, hi = np.quantile(residuals, [quantile, 1.0 - quantile])
    low, high = widen * min(float(lo), 0.0), widen * max(float(hi), 0.0)
    mine = [f for c in own if (f := features(c, step, horizon)) is not None]
    if not mine or not (math.isfinite(low) and math.isfinite(high)):
        return None
    mu = np.array(mine, dtype=float).mean(axis=0)
    ended = [(f, c[-1][1]) for c in own_finished if (f := features(c, step, horizon)) is not None]
    if ended:
        level = float(np.mean([v - ((np.array(f) - mu) / sd) @ coef for f, v in ended]))
    else:
        level = float(np.mean([c[-1][1] for g in groups for c in g]))
    return Model(step, horizon, mu, sd, np.concatenate([[level], coef]), low, high, len(y))


def agree(sources: Sequence[Sequence[Curve]], step: int) -> bool:
    """Whether every source's values at ``step`` rank its finals the same way round (the sign
    of their Spearman correlation): a guard, as related tasks need not share a shape."""
    signs = set()
    for group in (_past(s, step) for s in sources):
        if len(group) < MIN_PER_SOURCE:
            continue
        early = np.array([value_at(c, step) for c in group], dtype=float).argsort().argsort()
        final = np.array([c[-1][1] for c in group], dtype=float).argsort().argsort()
        rho = float(np.corrcoef(early, final)[0, 1]) if early.std() and final.std() else 0.0
        signs.add(rho > 0)
    return len(signs) == 1


class WarmForecastScheduler(ForecastScheduler):
    """The ``forecast`` scheduler of a warm-started study: until the study has its own
    ``MIN_CURVES`` finished curves past a step, it judges from the earlier studies' curves
    (``transfer_fit``), so no configuration has to run unpaused for the forecast to learn."""

    def __init__(
        self,
        spec: ForecastSchedulerSpec,
        sources: Sequence[Sequence[Curve]],
        *,
        guard: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(spec, **kwargs)
        self.sources = [list(s[:MAX_SOURCE_CURVES]) for s in sources[:MAX_SOURCES]]
        if guard and self.candidates and not agree(self.sources, self.candidates[0]):
            self.sources = []  # they learnt different shapes: learn from its own, as cold

    def judgeable(self, configs: Sequence[Config]) -> tuple[int, ...]:
        learnt = [sum(len(g) for g in self._groups(r)) >= MIN_CURVES for r in self.candidates]
        own = set(super().judgeable(configs))
        return tuple(r for r, ok in zip(self.candidates, learnt, strict=True) if ok or r in own)

    def _groups(self, step: int) -> list[list[Curve]]:
        return [g for s in self.sources if len(g := _past(s, step)) >= MIN_PER_SOURCE]

    def audits(self, configs: Sequence[Config]) -> bool:
        if not self.sources:
            return super().audits(configs)
        every = self.audit_every
        return every is not None and len(configs) % every == 0

    def model_at(self, configs: Sequence[Config], step: int) -> Model | None:
        finished = [c.values for c in configs if c.final is not None]
        if len(_past(finished, step)) >= MIN_CURVES:
            return super().model_at(configs, step)
        own = [c.values for c in configs if c.values]
        return transfer_fit(self.sources, own, finished, step, quantile=self.quantile)
