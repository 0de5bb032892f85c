"""A warm-started study's forecast learnt within earlier studies' curves, placed on its own
level, so its forecast scheduler judges from its first configuration on."""

from __future__ import annotations

from bench.warm_curves import MIN_PER_SOURCE, WarmForecastScheduler, agree, transfer_fit
from hpo.core.forecast import MIN_CURVES, fit
from hpo.core.schedulers import Start
from hpo.core.schedulers.forecast import ForecastScheduler
from hpo.core.schedulers.rungs import Config, Continue
from hpo.core.spec import ForecastSchedulerSpec

STEPS = 9
SPEC = ForecastSchedulerSpec(min_steps=1, min_pairs=8)
EARLY = [0.2 + 0.1 * i for i in range(8)]


def curve(early: float, final: float, upto: int = STEPS) -> tuple[tuple[int, float], ...]:
    """A straight line from ``early`` at step 1 to ``final`` at the last step."""
    return tuple((t, early + (final - early) * (t - 1) / (STEPS - 1)) for t in range(1, upto + 1))


def source(shift: float) -> list[tuple[tuple[int, float], ...]]:
    """An earlier study whose fast learners end worst, its level moved by ``shift`` (twice
    as far at the start): pooled, the studies' curves rank the other way round."""
    return [curve(e + 2 * shift, 3.0 - e + shift) for e in EARLY]


SOURCES = [source(0.0), source(1.0), source(2.0)]


def test_the_forecast_ranks_as_within_each_source_and_takes_the_studys_own_level() -> None:
    own_done = curve(0.5, 1.0)  # a level none of the sources has
    fast, slow = curve(0.3, 1.2, upto=1), curve(0.9, 0.6, upto=1)
    model = transfer_fit(SOURCES, [own_done, fast, slow], [own_done], 1)
    assert model is not None
    predicted = {name: model.predict(c) for name, c in (("fast", fast), ("slow", slow))}
    assert predicted["fast"] is not None and predicted["slow"] is not None
    assert predicted["slow"].mean < predicted["fast"].mean  # the late bloomer ends best
    pooled = fit([c for s in SOURCES for c in s], 1)  # across studies, not within
    assert pooled is not None
    wrong = pooled.predict(slow), pooled.predict(fast)
    assert wrong[0] is not None and wrong[1] is not None and wrong[0].mean > wrong[1].mean
    done = model.predict(own_done)
    assert done is not None and abs(done.mean - 1.0) < 1e-9  # the level of its own finals


def test_no_forecast_from_too_few_source_curves_past_the_step() -> None:
    few = [[curve(e, 3.0 - e) for e in EARLY[: MIN_PER_SOURCE - 1]]] * MIN_CURVES
    assert transfer_fit(few, [curve(0.5, 1.0, upto=1)], [], 1) is None
    short = [[curve(e, 3.0 - e, upto=2) for e in EARLY]]  # they ended at step 2
    assert transfer_fit(short, [curve(0.5, 1.0, upto=2)], [], 2) is None
    assert transfer_fit(SOURCES, [], [], 1) is None  # no own curve to place it


def test_a_warm_forecast_pauses_its_first_configuration_where_a_cold_one_would_not() -> None:
    assert ForecastScheduler(SPEC).next_work([], can_start=True) == Start(None)
    warm = WarmForecastScheduler(SPEC, SOURCES)
    assert warm.next_work([], can_start=True) == Start(1)
    # the one paused configuration: nothing finished beats its bound, so it goes on
    first = Config(0, {"lr": 0.0}, curve(0.9, 0.6, upto=1), "paused", 0, False, 1)
    assert warm.next_work([first], can_start=True) == Continue(0, 0, until=3)


def test_the_guard_drops_sources_whose_early_ranks_run_different_ways() -> None:
    ranked = [curve(e, 1.0 + e) for e in EARLY]  # early ranks hold to the end here
    assert agree(SOURCES, 1) and not agree([*SOURCES, ranked], 1)
    guarded = WarmForecastScheduler(SPEC, [*SOURCES, ranked], guard=True)
    assert guarded.next_work([], can_start=True) == Start(None)  # as a cold study: unpaused
    assert WarmForecastScheduler(SPEC, SOURCES, guard=True).next_work([], can_start=True) == Start(
        1
    )
