"""The learning-curve forecast: final values from partial curves, learnt from finished ones."""

from __future__ import annotations

import numpy as np

from hpo.core.forecast import MAX_CURVES, MIN_CURVES, Curve, extrapolate, forecast, value_at

STEPS = 30


def power_law(floor: float, scale: float, steps: int = STEPS) -> list[tuple[int, float]]:
    return [(t, floor + scale * t**-0.5) for t in range(1, steps + 1)]


def crossing(early: float, steps: int = STEPS) -> list[tuple[int, float]]:
    """Fast learners end worst: the lower the loss at the start, the higher at the end."""
    final = 3.0 - early
    return [(t, early + (final - early) * (t - 1) / (steps - 1)) for t in range(1, steps + 1)]


def test_value_at_reads_the_first_report_at_or_after_a_step() -> None:
    curve = [(2, 5.0), (4, 3.0)]
    assert value_at(curve, 1) == 5.0 and value_at(curve, 3) == 3.0 and value_at(curve, 5) is None


def test_a_power_law_extrapolates_to_its_final_value() -> None:
    curve = power_law(1.0, 4.0)
    final = curve[-1][1]
    assert abs(extrapolate(curve, 8, STEPS) - final) < abs(value_at(curve, 8) - final) / 10  # type: ignore[operator]


def test_recovers_a_power_law_family_final_value_better_than_its_current_value() -> None:
    rng = np.random.default_rng(0)
    finished: list[Curve] = [
        power_law(float(f), float(s)) for f, s in rng.uniform([0.5, 1.0], [2.0, 5.0], (20, 2))
    ]
    partial = power_law(1.2, 3.0)
    truth = partial[-1][1]
    predicted = forecast(partial[:6], 6, finished)
    assert predicted is not None and predicted.curves == 20
    naive = abs(partial[5][1] - truth)
    assert abs(predicted.mean - truth) < naive / 10
    assert predicted.low <= predicted.mean <= predicted.high


def test_learns_that_early_ranks_reverse_on_crossing_curves() -> None:
    finished: list[Curve] = [crossing(float(e)) for e in np.linspace(0.2, 1.4, 12)]
    fast, slow = crossing(0.3)[:4], crossing(1.3)[:4]
    assert fast[-1][1] < slow[-1][1]  # the fast learner leads at the cut
    f, s = forecast(fast, 4, finished), forecast(slow, 4, finished)
    assert f is not None and s is not None
    assert s.mean < f.mean  # ... and is forecast to end worse
    assert abs(s.mean - crossing(1.3)[-1][1]) < abs(slow[-1][1] - crossing(1.3)[-1][1])


def test_uncertainty_shrinks_with_more_finished_curves() -> None:
    rng = np.random.default_rng(1)

    def noisy(n: int) -> list[Curve]:
        curves: list[Curve] = []
        for floor in rng.uniform(0.5, 2.0, n):
            curve = power_law(float(floor), 3.0)
            curves.append(curve[:-1] + [(STEPS, curve[-1][1] + float(rng.normal(0, 0.1)))])
        return curves

    partial = power_law(1.0, 3.0)[:6]
    few, many = forecast(partial, 6, noisy(6)), forecast(partial, 6, noisy(120))
    assert few is not None and many is not None
    assert many.high - many.low < few.high - few.low


def test_no_forecast_without_enough_finished_curves_past_the_step() -> None:
    finished: list[Curve] = [power_law(1.0, float(s)) for s in range(1, MIN_CURVES)]
    assert forecast(power_law(1.0, 2.0)[:6], 6, finished) is None
    short: list[Curve] = [power_law(1.0, float(s), steps=5) for s in range(1, 10)]
    assert forecast(power_law(1.0, 2.0)[:6], 6, short) is None  # none went past step 6


def test_learns_from_at_most_max_curves() -> None:
    finished: list[Curve] = [power_law(1.0 + i / 1000, 3.0) for i in range(MAX_CURVES + 50)]
    predicted = forecast(power_law(1.0, 3.0)[:6], 6, finished)
    assert predicted is not None and predicted.curves == MAX_CURVES
