"""The forecast scheduler: adaptive's rungs while new configurations may start, then paused
configurations continue in order of their forecast final value, so the best is kept."""

from __future__ import annotations

import math
from typing import Any

from hpo.core.forecast import MIN_CURVES
from hpo.core.schedulers import Idle, Start
from hpo.core.schedulers.adaptive import AdaptiveScheduler
from hpo.core.schedulers.builder import SCHEDULERS
from hpo.core.schedulers.forecast import ForecastScheduler, forecast_bounds, forecast_rungs
from hpo.core.schedulers.rungs import Config, Continue
from hpo.core.spec import AdaptiveSchedulerSpec, ForecastSchedulerSpec, SearchSpec
from hpo.simulate import simulate

STEPS = 9
SPEC = ForecastSchedulerSpec(min_steps=1, min_pairs=8, audit_every=4)


def curve(early: float, final: float, upto: int = STEPS) -> tuple[tuple[int, float], ...]:
    """A straight line from ``early`` at step 1 to ``final`` at the last step."""
    return tuple((t, early + (final - early) * (t - 1) / (STEPS - 1)) for t in range(1, upto + 1))


def finished(early: list[float], final: list[float]) -> list[Config]:
    return [
        Config(i, {"lr": float(i)}, curve(e, f), "complete", i, True)
        for i, (e, f) in enumerate(zip(early, final, strict=True))
    ]


def paused(number: int, early: float, final: float, at: int = 1) -> Config:
    """Paused at step ``at`` on the way from ``early`` to ``final`` (which it has not seen)."""
    return Config(
        number, {"lr": float(number)}, curve(early, final, at), "paused", number, False, at
    )


# Crossing curves: the lower the early loss, the higher the final one (fast learners end worst).
EARLY = [0.2 + 0.1 * i for i in range(10)]
CROSSING = finished(EARLY, [3.0 - e for e in EARLY])  # finals 2.8 .. 1.9


def test_once_nothing_new_may_start_the_forecast_best_continues_not_the_early_leader() -> None:
    fast, slow = paused(20, 0.25, 2.75), paused(21, 1.4, 1.6)
    scheduler = ForecastScheduler(SPEC)
    assert scheduler.rungs([*CROSSING, fast, slow]) == ()  # rung 1 ranks backwards here
    # the early leader (fast) would be ASHA's pick; the forecast picks the late bloomer
    decision = scheduler.next_work([*CROSSING, fast, slow], can_start=False)
    assert decision == Continue(21, 21, until=3)  # the next rung a forecast judges from
    bounds = dict(
        (c.number, b)
        for b, c in forecast_bounds([*CROSSING, fast, slow], minimize=True, quantile=SPEC.quantile)
    )
    assert bounds[21] is not None and bounds[20] is not None and bounds[21] < bounds[20]
    # the early leader is still continued after it (it is never lost), then the study is done
    ended = Config(21, {"lr": 21.0}, curve(1.4, 1.6), "complete", 22, False)
    assert scheduler.next_work([*CROSSING, fast, ended], can_start=False) == Continue(
        20, 20, until=3
    )
    both = [*CROSSING, Config(20, {"lr": 20.0}, curve(0.25, 2.75), "complete", 23, False), ended]
    assert scheduler.next_work(both, can_start=False) == Idle(done=True)
    running = Config(22, {"lr": 22.0}, curve(1.0, 2.0, 3), "running", 22, True)
    assert scheduler.next_work([*both, running], can_start=False) == Idle(done=False)
    # while new ones may start, only a forecast that could beat the best continues
    assert scheduler.hopeful([*CROSSING, fast, slow]) == Continue(21, 21, until=3)
    assert scheduler.hopeful([*CROSSING, fast, ended]) is None


def test_a_finite_space_fully_tried_starts_nothing_new() -> None:
    fast, slow = paused(20, 0.25, 2.75), paused(21, 1.4, 1.6)
    configs = [*CROSSING, fast, slow]
    exhausted = ForecastScheduler(SPEC, size=len(configs))
    assert exhausted.next_work(configs, can_start=True) == Continue(21, 21, until=3)
    room = ForecastScheduler(SPEC, size=len(configs) + 1)
    assert isinstance(room.next_work(configs, can_start=True), Continue)  # a dropped rung
    # a forecast exists from rung 1: a new configuration pauses there to be judged
    assert room.next_work(CROSSING, can_start=True) == Start(until=1)


def test_where_ranks_hold_it_promotes_as_adaptive_does() -> None:
    ranked = finished([float(i) for i in range(13)], [float(i) / 2 for i in range(13)])
    waiting = [paused(20 + i, 0.5 + i, 0.25 + i / 2) for i in range(6)]
    adaptive = AdaptiveScheduler(AdaptiveSchedulerSpec(min_steps=1, min_pairs=8, audit_every=4))
    mine = ForecastScheduler(SPEC)
    assert mine.rungs(ranked) == adaptive.rungs(ranked) == (1, 3)
    for configs in (ranked, [*ranked, *waiting]):
        assert mine.next_work(configs, can_start=True) == adaptive.next_work(
            configs, can_start=True
        )


def test_with_no_forecast_yet_nothing_is_ruled_out() -> None:
    few = CROSSING[:2]
    waiting = [paused(20, 0.25, 2.75), paused(21, 1.4, 1.6, at=3)]
    bounds = forecast_bounds([*few, *waiting], minimize=True, quantile=SPEC.quantile)
    assert [(b, c.number) for b, c in bounds] == [(None, 21), (None, 20)]  # most advanced first
    assert ForecastScheduler(SPEC).next_work([*few, *waiting], can_start=False) == Continue(
        21, 21, until=None
    )


def test_a_rung_is_judged_by_the_forecast_once_enough_finished_curves_went_past_it() -> None:
    few = CROSSING[: MIN_CURVES - 1]
    assert forecast_rungs(few, (1, 3, 9)) == ()
    short = Config(30, {"lr": 30.0}, curve(1.0, 2.0)[:3], "complete", 30, True)
    assert forecast_rungs([*few, short], (1, 3, 9)) == (1,)  # it ended at step 3
    assert forecast_rungs(CROSSING[:MIN_CURVES], (1, 3, 9)) == (1, 3)  # none went past 9


# Five ranked curves: a forecast exists at rungs 1 and 3, the rungs are not trusted yet.
RANKED = finished([1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 1.0, 1.5, 2.0, 2.5])


def test_with_no_trusted_rung_the_forecast_stops_the_hopeless_and_continues_the_best() -> None:
    scheduler = ForecastScheduler(SPEC)
    assert scheduler.rungs(RANKED) == () and scheduler.pausing(RANKED) == (1, 3)
    assert scheduler.next_work(RANKED, can_start=True) == Start(until=1)  # to be judged there
    hopeless = paused(20, 9.0, 4.5)
    assert scheduler.next_work([*RANKED, hopeless], can_start=True) == Start(until=1)
    leader = paused(21, 0.5, 0.25)
    decision = scheduler.next_work([*RANKED, hopeless, leader], can_start=True)
    assert decision == Continue(21, 21, until=3)  # on to the next rung it is judged at


def test_where_ranks_reverse_the_forecast_share_continues_the_late_bloomer() -> None:
    fast, slow = paused(20, 0.25, 2.75), paused(21, 1.4, 1.6)
    scheduler = ForecastScheduler(SPEC)
    assert scheduler.rungs([*CROSSING, fast, slow]) == ()
    assert scheduler.promoted([*CROSSING, fast, slow], {20, 21}, (1, 3)) == Continue(
        21, 21, until=3
    )
    # ASHA on the rung's score would have continued the early leader alone
    assert scheduler.promoted([*CROSSING, fast], {20}, (1, 3)) is None


def test_once_nothing_new_may_start_a_hopeless_one_waits_while_anything_runs() -> None:
    fast = paused(20, 0.25, 2.75)
    ended = Config(21, {"lr": 21.0}, curve(1.4, 1.6), "complete", 22, False)
    running = Config(22, {"lr": 22.0}, curve(1.0, 2.0, 3), "running", 22, True)
    scheduler = ForecastScheduler(SPEC)
    assert scheduler.hopeful([*CROSSING, fast, ended]) is None
    assert scheduler.next_work([*CROSSING, fast, ended, running], can_start=False) == Idle(
        done=False
    )
    assert scheduler.next_work([*CROSSING, fast, ended], can_start=False) == Continue(
        20, 20, until=3
    )


class Crossing:
    """A 4 x 4 grid of late bloomers: the lower the loss at the start, the worse at the end."""

    search_space: Any = {
        "learning_rate": {"type": "categorical", "choices": [1e-5, 1e-4, 1e-3, 1e-2]},
        "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16, 32, 64]},
    }

    def curve(self, params: dict[str, Any]) -> list[tuple[float, float]]:
        final = (
            1
            + (math.log10(params["learning_rate"]) + 3) ** 2
            + params["per_device_train_batch_size"] / 64
        )
        early = 10 - final
        return [(1.0, early + (final - early) * i / 8) for i in range(STEPS)]


def test_the_simulator_replays_it_to_the_grid_best_at_most_once_per_configuration() -> None:
    task = Crossing()
    best = min(
        task.curve({"learning_rate": lr, "per_device_train_batch_size": b})[-1][1]
        for lr in (1e-5, 1e-4, 1e-3, 1e-2)
        for b in (8, 16, 32, 64)
    )
    search = SearchSpec.model_validate(
        {
            "space": task.search_space,
            "scheduler": {"type": "forecast", "min_steps": 1, "min_pairs": 4},
            "budget": {"max_trials": 10_000},
        }
    )
    assert SCHEDULERS["forecast"](search).size == 16  # type: ignore[attr-defined]
    for workers in (1, 3):
        sim = simulate(search, task, workers=workers, seed=0)
        assert min(t.value for t in sim.trials if t.value is not None) == best
        # it stops by itself: no configuration starts once every one of the grid did
        seen: set[tuple[tuple[str, Any], ...]] = set()
        for trial in sorted(sim.trials, key=lambda t: t.start):
            assert len(seen) < 16, "a configuration started after the grid ran out"
            seen.add(tuple(sorted(trial.params.items())))
        assert len(seen) == 16
