"""Forecast a partial learning curve's final value from the study's own finished curves.

Per-curve extrapolation alone cannot know that curves which learn fast end worst (NMTLC:
Spearman -0.71 between the score at R/9 and the final one), so the forecast is a small ridge
regression fitted on the finished curves cut at the partial curve's step: from the value
there, the slope over the second half of the way there and a power-law extrapolation
(``a + b * t**-c``) of the points so far, to the final value. Its uncertainty is the spread
of the leave-one-out residuals of that fit, widened for few curves: how far off the forecast
was, from this step, on curves whose end the study knows.

Pure numpy, bounded: at most ``MAX_CURVES`` curves of at most ``MAX_POINTS`` points each.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Curve = Sequence[tuple[int, float]]  # (step, value), ascending steps

MAX_CURVES = 200  # the most recent finished curves learnt from
MAX_POINTS = 64  # points of a curve its power-law fit reads (evenly thinned)
MIN_CURVES = 4  # fewer finished curves past a step: no forecast from it
RIDGE = 1.0  # on standardised features: few curves lean on the mean, not on noise
EXPONENTS = np.array([0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0])


@dataclass(frozen=True)
class Forecast:
    """A partial curve's predicted final value: ``mean``, and the ``quantile`` and
    ``1 - quantile`` bounds ``low`` <= ``high`` of that prediction; ``curves``: the finished
    curves it learnt from."""

    mean: float
    low: float
    high: float
    curves: int


def value_at(curve: Curve, step: int) -> float | None:
    """The first value at or after ``step`` (a rung's score), None past the curve's end."""
    i = bisect.bisect_left(curve, step, key=lambda point: point[0])
    return curve[i][1] if i < len(curve) else None


def extrapolate(curve: Curve, step: int, horizon: int) -> float:
    """A power law ``a + b * t**-c`` least-squares fitted to the points up to ``step`` (the
    exponent from a small grid), at ``horizon``; the last value with under 3 points. Kept
    within twice the observed range of the last value: a forecast feature, not an oracle."""
    points = [(t, v) for t, v in curve if t <= step and t > 0]
    if len(points) > MAX_POINTS:
        keep = np.linspace(0, len(points) - 1, MAX_POINTS).round().astype(int)
        points = [points[i] for i in keep]
    last = points[-1][1] if points else value_at(curve, step)
    assert last is not None, "a curve has a value at or after the step it is cut at"
    if len(points) < 3:
        return last
    t = np.array([p[0] for p in points], dtype=float)
    v = np.array([p[1] for p in points], dtype=float)
    x = t[None, :] ** -EXPONENTS[:, None]  # (exponents, points)
    xm, vm = x.mean(axis=1, keepdims=True), v.mean()
    sxx = ((x - xm) ** 2).sum(axis=1)
    b = np.where(sxx > 0, ((x - xm) * (v - vm)).sum(axis=1) / np.where(sxx > 0, sxx, 1), 0.0)
    a = vm - b * xm[:, 0]
    sse = ((a[:, None] + b[:, None] * x - v) ** 2).sum(axis=1)
    k = int(np.argmin(sse))
    value = float(a[k] + b[k] * max(horizon, 1) ** -EXPONENTS[k])
    spread = float(v.max() - v.min())
    return min(max(value, last - 2 * spread), last + 2 * spread)


def features(curve: Curve, step: int, horizon: int) -> list[float] | None:
    """What the forecast reads of a curve cut at ``step``: its value there, the change over
    the second half of the way there, and its power-law extrapolation to ``horizon``."""
    now = value_at(curve, step)
    if now is None:
        return None
    half = value_at(curve, max(1, step // 2))
    assert half is not None, "a curve with a value at the step has one before it"
    return [now, now - half, extrapolate(curve, step, horizon)]


@dataclass(frozen=True)
class Model:
    """The forecast from one step, fitted on the finished curves that went past it."""

    step: int
    horizon: int
    mu: np.ndarray
    sd: np.ndarray
    coef: np.ndarray
    low: float  # the residual quantiles, widened
    high: float
    curves: int

    def predict(self, partial: Curve) -> Forecast | None:
        """The final value of ``partial`` cut at this model's step."""
        mine = features(partial, self.step, self.horizon)
        if mine is None:
            return None
        point = np.concatenate([[1.0], (np.array(mine) - self.mu) / self.sd])
        mean = float(point @ self.coef)
        if not math.isfinite(mean):
            return None
        return Forecast(mean, mean + self.low, mean + self.high, self.curves)


def fit(finished: Sequence[Curve], step: int, *, quantile: float = 0.1) -> Model | None:
    """The forecast from ``step``, fitted on the ``finished`` curves that went past it; None
    when fewer than ``MIN_CURVES`` did.

    Its bounds are the ``quantile`` and ``1 - quantile`` empirical quantiles of the fit's
    leave-one-out residuals, scaled by ``n / (n - p)`` (``p`` fitted coefficients): wide
    with few curves, narrower as finished curves accumulate.
    """
    finished = [c for c in finished[-MAX_CURVES:] if c and c[-1][0] > step]
    if len(finished) < MIN_CURVES:
        return None
    horizon = int(np.median([c[-1][0] for c in finished]))
    rows = [features(c, step, horizon) for c in finished]
    x = np.array(rows, dtype=float)
    y = np.array([c[-1][1] for c in finished], dtype=float)
    n = len(y)
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    design = np.hstack([np.ones((n, 1)), (x - mu) / sd])
    penalty = RIDGE * np.eye(design.shape[1])
    penalty[0, 0] = 0.0  # the intercept is not shrunk
    inverse = np.linalg.inv(design.T @ design + penalty)
    coef = inverse @ design.T @ y
    leverage = np.einsum("ij,jk,ik->i", design, inverse, design)
    residuals = (y - design @ coef) / np.maximum(1.0 - leverage, 1e-3)  # leave-one-out
    widen = n / max(n - design.shape[1], 1)
    lo, hi = np.quantile(residuals, [quantile, 1.0 - quantile])
    low, high = widen * min(float(lo), 0.0), widen * max(float(hi), 0.0)
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return Model(step, horizon, mu, sd, coef, low, high, n)


def forecast(
    partial: Curve, step: int, finished: Sequence[Curve], *, quantile: float = 0.1
) -> Forecast | None:
    """The final value of ``partial`` (cut at ``step``) predicted from the ``finished``
    curves (``fit``); None when too few went past ``step``."""
    model = fit(finished, step, quantile=quantile)
    return None if model is None else model.predict(partial)
