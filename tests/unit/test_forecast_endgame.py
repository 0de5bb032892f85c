"""The forecast scheduler under a time or GPU-hour budget and on a saturated metric, and ties
at a rung: the best is never left paused for want of budget, and a saturated metric does not
continue what cannot beat the best."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace
from typing import Any

from optuna.trial import TrialState, create_trial

from hpo.core import records
from hpo.core.schedulers import Idle, Start
from hpo.core.schedulers.asha import AshaScheduler
from hpo.core.schedulers.dispatch import budget_left
from hpo.core.schedulers.forecast import ForecastScheduler, remaining_seconds
from hpo.core.schedulers.rungs import Config, Continue
from hpo.core.spec import AshaSchedulerSpec, SearchSpec
from hpo.simulate import simulate
from tests.unit.test_forecast_scheduler import CROSSING, SPEC, STEPS, Crossing, curve, paused

# Each finished curve cost 1 device second a step; the paused ones too.
PAID = [replace(c, seconds=float(STEPS)) for c in CROSSING]


def test_a_budget_that_would_not_cover_what_paused_continues_it_before_new_starts() -> None:
    slow = replace(paused(21, 1.4, 1.6), seconds=1.0)  # its bound beats the best final (1.9)
    fast = replace(paused(20, 0.25, 2.75), seconds=1.0)  # its bound does not
    configs = [*PAID, fast, slow]
    assert remaining_seconds(configs, slow) == STEPS - 1
    scheduler = ForecastScheduler(SPEC)  # a continuous space: size None, never exhausted
    # plenty left: the usual hopeful continuation, up to the next rung
    assert scheduler.next_work(configs, can_start=True, left=1e6) == Continue(21, 21, until=3)
    assert scheduler.next_work(configs, can_start=True) == Continue(21, 21, until=3)
    # what is left would not finish both and one new configuration: the best bound goes on
    # to its end before anything new starts ...
    short = 2 * (STEPS - 1) + STEPS - 1
    assert scheduler.next_work(configs, can_start=True, left=short) == Continue(21, 21, None)
    # ... then the one the forecast rules out (its bound may be wrong: never left paused)
    ended = Config(21, {"lr": 21.0}, curve(1.4, 1.6), "complete", 22, False, seconds=9.0)
    alone = [*PAID, fast, ended]
    assert scheduler.next_work(alone, can_start=True, left=2 * (STEPS - 1)) == Continue(
        20, 20, None
    )
    # nothing paused: new configurations start, pausing while the budget could continue them
    assert scheduler.next_work([*PAID, ended], can_start=True, left=1e6) == Start(until=1)
    assert scheduler.next_work([*PAID, ended], can_start=True, left=STEPS - 1) == Start(until=None)


def test_equal_scores_at_a_rung_rank_on_the_tie_break_curve() -> None:
    """Three configurations score 1.0 at rung 1 (a saturated metric): ASHA's best third is the
    one of lowest validation loss there, not the earliest."""
    losses = [0.5, 0.2, 0.9]
    configs = [
        Config(i, {"lr": float(i)}, ((1, 1.0),), "paused", i, False, 1, ties=((1, loss),))
        for i, loss in enumerate(losses)
    ]
    asha = AshaScheduler(AshaSchedulerSpec(min_steps=1, reduction_factor=3), minimize=False)
    assert asha.next_work(configs, can_start=True) == Continue(1, 1, until=3)
    untied = [replace(c, ties=()) for c in configs]  # no tie-break: all rank first
    assert asha.next_work(untied, can_start=True) == Continue(0, 0, until=3)


def _saturated(ties: list[float], paused_ties: list[float]) -> list[Config]:
    """Finished curves rising to the ceiling 1.0 with final validation losses ``ties``, and
    configurations paused at step 2 whose validation loss there is ``paused_ties``."""
    done = [
        Config(i, {"lr": float(i)}, curve(0.5, 1.0), "complete", i, True, tie=t)
        for i, t in enumerate(ties)
    ]
    held = [
        Config(
            20 + i,
            {"lr": 20.0 + i},
            curve(0.5, 1.0, 2),
            "paused",
            20 + i,
            False,
            2,
            ties=((2, t),),
        )
        for i, t in enumerate(paused_ties)
    ]
    return done + held


def test_once_the_metric_saturates_only_those_ahead_on_the_tie_break_continue() -> None:
    scheduler = ForecastScheduler(SPEC, minimize=False, ceiling=1.0)
    behind = _saturated([0.3, 0.1, 0.4, 0.2, 0.5], [0.6, 0.9])
    assert scheduler.saturated(behind)
    # every paused one would at most tie: the study ends instead of continuing each
    assert scheduler.next_work(behind, can_start=False) == Idle(done=True)
    assert scheduler.hopeful(behind) is None
    ahead = _saturated([0.3, 0.1, 0.4, 0.2, 0.5], [0.6, 0.05, 0.02])
    assert scheduler.next_work(ahead, can_start=False) == Continue(22, 22, until=3)
    # without a ceiling (a loss) the endgame continues every paused one, as before
    plain = ForecastScheduler(SPEC, minimize=False)
    assert not plain.saturated(behind)
    assert isinstance(plain.next_work(behind, can_start=False), Continue)


def test_budget_left_reads_the_gpu_hours_spent_and_the_time_to_the_timeout() -> None:
    search = SearchSpec.model_validate({"budget": {"max_gpu_hours": 1.0, "timeout_s": 100.0}})
    trials = [
        create_trial(state=TrialState.COMPLETE, value=1.0, user_attrs={}),
        create_trial(state=TrialState.RUNNING, user_attrs={}),
    ]
    records.record_device_time(trials[0], 3000.0, gpu=True)
    assert budget_left(trials, search, None) == 600.0  # no registration time: GPU hours only
    created = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=50)
    left = budget_left(trials, search, created)
    assert left is not None and 0 < left <= 2 * 50  # two workers, at most 50 s each
    assert budget_left(trials, SearchSpec(), created) is None


def test_under_a_time_budget_the_simulator_keeps_the_best_it_paused() -> None:
    """On a continuous-looking (unbounded) budget of trials, a timeout is all that ends the
    study: no paused configuration whose recorded final beats the study's best is left."""
    task = Crossing()
    finals = {
        tuple(sorted(p.items())): task.curve(dict(p))[-1][1]
        for p in (
            {"learning_rate": lr, "per_device_train_batch_size": b}
            for lr in (1e-5, 1e-4, 1e-3, 1e-2)
            for b in (8, 16, 32, 64)
        )
    }
    # the runs (workers, seed, timeout) where, without the budget's endgame, a configuration
    # paused as the time ran out, and it would have beaten the best
    for workers, seed, timeout in ((1, 1, 40.0), (1, 2, 50.0), (1, 3, 50.0), (3, 0, 20.0)):
        search = SearchSpec.model_validate(
            {
                "space": task.search_space,
                "scheduler": {"type": "forecast", "min_steps": 1, "min_pairs": 4},
                "budget": {"max_trials": 10_000, "timeout_s": timeout},
            }
        )
        sim = simulate(search, task, workers=workers, seed=seed)
        # it stopped: nothing started after the timeout (what ran then ran to its end)
        assert sim.total_cost <= (timeout + STEPS) * workers
        assert all(s.start < timeout for t in sim.trials for s in t.segments)
        best = min(t.value for t in sim.trials if t.value is not None)
        left_paused = [t for t in sim.trials if t.state == "paused"]
        missed: list[Any] = [
            t for t in left_paused if finals[tuple(sorted(t.params.items()))] < best
        ]
        assert not missed, (timeout, best, [(t.params, t.value) for t in missed])
        assert math.isfinite(best)
