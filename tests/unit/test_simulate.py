"""The simulator: deterministic, honest cost accounting, pruning saves cost, one factory."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo.core.errors import SpecError
from hpo.core.factory import load_study, suggest_params
from hpo.core.spec import (
    CategoricalDistribution,
    FloatDistribution,
    SearchSpace,
    SearchSpec,
    WarmStartSpec,
)
from hpo.core.warm_start import Ranked, WarmConfig
from hpo.simulate import NotRecorded, simulate


class Bowl:
    """A synthetic curve family: loss decays towards (log10(lr) + 3)^2 + 1; 10 points."""

    search_space = SearchSpace(
        learning_rate=FloatDistribution(low=1e-5, high=1e-1, log=True),
        per_device_train_batch_size=CategoricalDistribution(choices=[8, 16, 32, 64]),
    )

    def curve(self, params: dict[str, Any]) -> list[tuple[float, float]]:
        floor = (math.log10(params["learning_rate"]) + 3) ** 2 + 1
        cost = params["per_device_train_batch_size"] / 8
        return [(cost, floor + 5 / (i + 1)) for i in range(10)]


def spec(sampler: str = "tpe", pruner: str = "none", max_trials: int = 30) -> SearchSpec:
    return SearchSpec.model_validate(
        {
            "space": Bowl.search_space,
            "sampler": {"type": sampler},
            "pruner": {"type": pruner},
            "budget": {"max_trials": max_trials},
        }
    )


def test_same_seed_same_history() -> None:
    first = simulate(spec(pruner="median"), Bowl(), workers=4, seed=11)
    again = simulate(spec(pruner="median"), Bowl(), workers=4, seed=11)
    other = simulate(spec(pruner="median"), Bowl(), workers=4, seed=12)
    assert [(t.number, t.params, t.state, t.end) for t in first.trials] == [
        (t.number, t.params, t.state, t.end) for t in again.trials
    ]
    assert first.best_curve == again.best_curve
    assert [t.params for t in first.trials] != [t.params for t in other.trials]


def test_cost_is_the_sum_of_replayed_points() -> None:
    sim = simulate(spec(pruner="median"), Bowl(), workers=3, seed=0)
    assert len(sim.trials) == 30
    replayed = 0.0
    for trial in sim.trials:
        curve = Bowl().curve(trial.params)
        points = len(curve) if trial.state == "complete" else None
        if points is None:
            per_point = curve[0][0]
            points = round(trial.cost / per_point)
            assert 1 <= points < len(curve)
        assert trial.cost == pytest.approx(sum(c for c, _ in curve[:points]))
        replayed += trial.cost
    assert sim.total_cost == pytest.approx(replayed)
    assert sim.best_curve[-1][0] <= sim.total_cost


def test_pruned_trials_stop_consuming_cost() -> None:
    pruned = simulate(spec(pruner="successive_halving"), Bowl(), workers=2, seed=3)
    full = simulate(spec(pruner="none"), Bowl(), workers=2, seed=3)
    stopped = [t for t in pruned.trials if t.state == "pruned"]
    assert stopped
    for trial in stopped:
        assert trial.cost < sum(c for c, _ in Bowl().curve(trial.params))
    assert all(t.state == "complete" for t in full.trials)
    assert pruned.total_cost < full.total_cost


def test_workers_run_asynchronously() -> None:
    sim = simulate(spec(sampler="random"), Bowl(), workers=4, seed=1)
    ends = [t.end for t in sim.trials]
    assert ends == sorted(ends)
    assert len({t.worker for t in sim.trials}) == 4
    # cheap (small-batch) trials finish earlier than expensive ones that started with them
    assert len(set(ends)) > 4


def test_budget_in_cost_stops_the_run() -> None:
    sim = simulate(spec(max_trials=1000), Bowl(), workers=2, seed=0, max_cost=50.0)
    assert sim.total_cost < 50.0 + 2 * 8 * 10  # at most the trials in flight overrun


def test_simulator_samples_like_the_worker_factory() -> None:
    """Worker w of the simulator proposes what hpo.core.factory.load_study(seed_offset=w) does."""
    s = spec(sampler="random")
    sim = simulate(s, Bowl(), workers=1, seed=5)
    seeded = s.model_copy(update={"sampler": s.sampler.model_copy(update={"seed": 5})})
    study = load_study("sim", seeded, _fresh_storage())
    expected = []
    for _ in range(5):
        trial = study.ask()
        expected.append(suggest_params(trial, seeded))
        study.tell(trial, 1.0)
    assert [t.params for t in sim.trials[:5]] == expected


def _fresh_storage() -> optuna.storages.BaseStorage:
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="sim")
    return storage


class Holes(Bowl):
    def curve(self, params: dict[str, Any]) -> list[tuple[float, float]]:
        if params["per_device_train_batch_size"] == 64:
            raise NotRecorded("no run")
        return super().curve(params)


def test_unrecorded_configs_fail_at_no_cost() -> None:
    sim = simulate(spec(sampler="random", max_trials=20), Holes(), workers=2, seed=0)
    assert len(sim.trials) == 20
    assert all(t.params["per_device_train_batch_size"] != 64 for t in sim.trials)


class Nothing(Bowl):
    def curve(self, params: dict[str, Any]) -> list[tuple[float, float]]:
        raise NotRecorded("no run")


@pytest.mark.parametrize("sampler", ["random", "gp"])
def test_a_sampler_stuck_on_unrecorded_configs_ends_the_run(sampler: str) -> None:
    sim = simulate(spec(sampler=sampler), Nothing(), workers=2, seed=0)
    assert sim.stalled_workers == 2
    assert sim.trials == [] and sim.total_cost == 0


NMTLC = Path(
    os.environ.get(
        "HPO_NMTLC", Path(__file__).resolve().parents[3] / "shared/benchmarks/nmtlc/nmtlc.pkl"
    )
)


@pytest.mark.skipif(not NMTLC.exists(), reason=f"NMTLC data not found at {NMTLC}")
def test_nmtlc_adapter() -> None:
    from hpo.nmtlc import load_tasks

    tasks = load_tasks(NMTLC)
    assert len(tasks) == 10
    assert sum(len(t.curves) for t in tasks) == 269
    task = tasks[0]
    assert {k: len(v.choices) for k, v in task.search_space.items()} == {
        "learning_rate": 3,
        "per_device_train_batch_size": 3,
        "lora_r": 3,
    }
    sim = simulate(
        spec(sampler="tpe", max_trials=15).model_copy(update={"space": task.search_space}),
        task,
        workers=4,
        seed=0,
    )
    assert len(sim.trials) == 15
    assert sim.best_curve[-1][1] >= task.best_value


# --- pause and continue ----------------------------------------------------------------------


def scheduled(
    scheduler: dict[str, Any], max_trials: int = 30, sampler: str = "random"
) -> SearchSpec:
    return spec(sampler=sampler, max_trials=max_trials).model_copy(
        update={"scheduler": SearchSpec.model_validate({"scheduler": scheduler}).scheduler}
    )


ASHA = {"type": "asha", "min_steps": 1, "reduction_factor": 3}


@pytest.mark.parametrize(
    "scheduler", [ASHA, {"type": "top_k", "at_steps": 2, "k": 2, "min_scored": 4}]
)
def test_a_continued_configuration_pays_only_for_its_remaining_points(
    scheduler: dict[str, Any],
) -> None:
    sim = simulate(scheduled(scheduler), Bowl(), workers=3, seed=0)
    assert any(len(t.segments) > 1 for t in sim.trials)
    assert any(t.state == "paused" for t in sim.trials)
    for trial in sim.trials:
        curve = Bowl().curve(trial.params)
        # every point trained once, in order, across segments: nothing restarted
        steps = [s for seg in trial.segments for s in range(seg.first_step, seg.last_step + 1)]
        assert steps == list(range(1, len(steps) + 1))
        for seg in trial.segments:
            assert seg.cost == pytest.approx(
                sum(c for c, _ in curve[seg.first_step - 1 : seg.last_step])
            )
        assert trial.cost == pytest.approx(sum(c for c, _ in curve[: len(steps)]))
        if trial.state == "complete":
            assert len(steps) == len(curve) and trial.value == curve[-1][1]
    assert sim.total_cost == pytest.approx(sum(t.cost for t in sim.trials))


def test_max_trials_counts_configurations_not_segments() -> None:
    sim = simulate(scheduled(ASHA, max_trials=12), Bowl(), workers=4, seed=2)
    assert len(sim.trials) == 12
    assert sum(len(t.segments) for t in sim.trials) > 12
    # nothing new may start, so each rung's best went on: the study ends with a result
    assert any(t.state == "complete" for t in sim.trials) and sim.best_curve


def test_same_seed_same_schedule() -> None:
    runs = [simulate(scheduled(ASHA, sampler="tpe"), Bowl(), workers=3, seed=s) for s in (4, 4, 5)]
    histories = [
        [
            (
                t.number,
                t.params,
                t.state,
                [(g.trial, g.worker, g.first_step, g.last_step, g.end) for g in t.segments],
            )
            for t in sim.trials
        ]
        for sim in runs
    ]
    assert histories[0] == histories[1] != histories[2]


class LateBloomers(Bowl):
    """Early ranks are the final ranks reversed at every point before the last."""

    def curve(self, params: dict[str, Any]) -> list[tuple[float, float]]:
        floor = (math.log10(params["learning_rate"]) + 3) ** 2 + 1
        cost = params["per_device_train_batch_size"] / 8
        weights = [(9 - i) / 10 for i in range(10)]  # 0.9 .. 0: reversed while 20 w > 1
        return [(cost, floor * (1 - 20 * w) + 110 * w) for w in weights]


def test_adaptive_falls_back_to_plain_search_where_no_rung_predicts_the_end() -> None:
    adaptive = {"type": "adaptive", "min_steps": 1, "min_pairs": 6}
    for workers in (1, 3):
        plain = simulate(spec(sampler="tpe"), LateBloomers(), workers=workers, seed=1)
        fallback = simulate(
            scheduled(adaptive, sampler="tpe"), LateBloomers(), workers=workers, seed=1
        )
        assert [(t.params, t.cost, t.end) for t in fallback.trials] == [
            (t.params, t.cost, t.end) for t in plain.trials
        ]
        assert fallback.best_curve == plain.best_curve
    # where early ranks hold, it pauses once it has measured that they do
    ranked = simulate(scheduled(adaptive, max_trials=60), Bowl(), workers=2, seed=0)
    assert any(len(t.segments) > 1 or t.state == "paused" for t in ranked.trials)


@pytest.mark.parametrize(
    ("scheduler", "says"),
    [
        ({"type": "pbt", "interval_steps": 2}, "PBT"),
        ({"type": "asha", "min_steps": 2, "cooldown": True}, "cool-down"),
    ],
)
def test_what_recorded_curves_cannot_say_is_not_replayed(
    scheduler: dict[str, Any], says: str
) -> None:
    search = SearchSpec.model_validate(
        {
            "space": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}},
            "scheduler": scheduler,
        }
    )
    with pytest.raises(SpecError, match=says):
        simulate(search, Bowl(), workers=1, seed=0)


def test_warm_configurations_run_first_on_every_worker() -> None:
    warm = [
        WarmConfig({"learning_rate": 1e-3, "per_device_train_batch_size": 8}, "earlier"),
        WarmConfig({"learning_rate": 2e-3}, "earlier"),
    ]
    sim = simulate(spec(max_trials=6), Bowl(), workers=2, seed=0, warm=warm)
    first = sorted(sim.trials, key=lambda t: t.number)[:2]
    assert first[0].params == warm[0].params
    assert first[1].params["learning_rate"] == warm[1].params["learning_rate"]  # batch sampled
    cold = simulate(spec(max_trials=6), Bowl(), workers=2, seed=0)
    assert sim.best_curve[0][1] < cold.best_curve[0][1]  # 1e-3 is the bowl's floor


def test_a_warm_started_study_fills_its_first_batch_from_the_ranking() -> None:
    warm = [WarmConfig({"learning_rate": 1e-3, "per_device_train_batch_size": 8}, "a")]
    configs = [
        {"learning_rate": 1e-3, "per_device_train_batch_size": 8},  # enqueued already
        {"learning_rate": 2e-3, "per_device_train_batch_size": 16},
        {"learning_rate": 5e-4, "per_device_train_batch_size": 32},
    ]
    ranking = [Ranked(p, i / 2) for i, p in enumerate(configs)]

    def warm_spec(sampler: str) -> SearchSpec:
        return spec(sampler, max_trials=8).model_copy(
            update={"warm_start": WarmStartSpec(studies=["a"], top_k=1)}
        )

    sim = simulate(warm_spec("tpe"), Bowl(), workers=3, seed=0, warm=warm, ranking=ranking)
    first = sorted(sim.trials, key=lambda t: t.number)
    # three workers start before any result: the enqueued one, then the ranking's next two
    assert [t.params for t in first[:3]] == configs
    # after the first result the study's own sampler decides: no more ranked configurations
    assert all(t.params not in configs for t in first[3:]), [t.params for t in first]
    # one worker: every later trial starts after a result, so the ranking is never followed
    # (random search: a TPE would take the ranking as its prior, hpo.core.prior_tpe)
    one = simulate(warm_spec("random"), Bowl(), workers=1, seed=0, warm=warm, ranking=ranking)
    plain = simulate(spec("random", max_trials=8), Bowl(), workers=1, seed=0, warm=warm)
    assert [t.params for t in one.trials] == [t.params for t in plain.trials]


def test_a_target_stops_the_run_without_changing_the_cost_to_reach_it() -> None:
    full = simulate(spec(max_trials=40), Bowl(), workers=2, seed=5)
    target = full.best_curve[len(full.best_curve) // 2][1]
    stopped = simulate(spec(max_trials=40), Bowl(), workers=2, seed=5, target=target)
    assert stopped.cost_to_reach(target) == full.cost_to_reach(target)
    assert stopped.best_curve == [p for p in full.best_curve if p[1] >= target]
    assert len(stopped.trials) < len(full.trials)


def test_an_initial_design_is_tried_first() -> None:
    point = {"learning_rate": 1e-3, "per_device_train_batch_size": 16}
    sim = simulate(spec(max_trials=5), Bowl(), workers=3, seed=0, first=[point])
    assert min(sim.trials, key=lambda t: t.number).params == point
    with pytest.raises(ValueError, match="initial design"):
        simulate(scheduled(ASHA), Bowl(), workers=1, seed=0, first=[point])


def test_warm_configurations_start_before_any_continuation_and_keep_their_own_curves() -> None:
    # A worker claims a queued trial before any decision: with a pausing scheduler the warm
    # configurations all start first, and a continuation never picks up a queued one.
    warm = [
        WarmConfig({"learning_rate": lr, "per_device_train_batch_size": 8}, "earlier")
        for lr in (1e-3, 1e-2, 1e-4, 3e-3, 3e-4)  # ASHA could continue one after the third
    ]
    sim = simulate(scheduled(ASHA, max_trials=8), Bowl(), workers=1, seed=0, warm=warm)
    first = sorted(sim.trials, key=lambda t: t.number)[: len(warm)]
    assert [t.params for t in first] == [w.params for w in warm]
    assert {t.segments[0].last_step for t in first} == {ASHA["min_steps"]}  # each paused
    assert any(len(t.segments) > 1 for t in sim.trials)
    for trial in sim.trials:
        if trial.state == "complete":
            assert trial.value == Bowl().curve(trial.params)[-1][1]
