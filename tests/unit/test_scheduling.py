"""Pause-and-continue decisions: pure functions over a study's trials (hpo.core.schedulers)."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from pydantic import ValidationError

from hpo.core.records import (
    CONTINUES_ATTR,
    COOLED_ATTR,
    INFEASIBLE_RECORD_ATTR,
    PAUSED_AT_ATTR,
    RETRIED_FROM_ATTR,
    UNTIL_ATTR,
)
from hpo.core.schedulers import Decision, Idle, Start
from hpo.core.schedulers.adaptive import (
    AdaptiveScheduler,
    fisher_lower_bound,
    rung_agreement,
    spearman,
    trusted_rungs,
)
from hpo.core.schedulers.asha import AshaScheduler
from hpo.core.schedulers.none import NoScheduler
from hpo.core.schedulers.rungs import Config, Continue, RungScheduler, configurations
from hpo.core.schedulers.top_k import TopKScheduler
from hpo.core.spec import (
    AdaptiveSchedulerSpec,
    AshaSchedulerSpec,
    NoSchedulerSpec,
    SearchSpec,
    StudySpec,
    TopKSchedulerSpec,
)

ASHA = AshaSchedulerSpec(min_steps=1, reduction_factor=3)
SchedulerSpec = NoSchedulerSpec | AshaSchedulerSpec | TopKSchedulerSpec | AdaptiveSchedulerSpec


def next_work(
    configs: list[Config], spec: SchedulerSpec, *, can_start: bool, minimize: bool = True
) -> Decision:
    """What the scheduler ``spec`` names decides over ``configs``."""
    scheduler: RungScheduler
    if isinstance(spec, NoSchedulerSpec):
        scheduler = NoScheduler(minimize=minimize)
    elif isinstance(spec, AshaSchedulerSpec):
        scheduler = AshaScheduler(spec, minimize=minimize)
    elif isinstance(spec, TopKSchedulerSpec):
        scheduler = TopKScheduler(spec, minimize=minimize)
    else:
        scheduler = AdaptiveScheduler(spec, minimize=minimize)
    return scheduler.next_work(configs, can_start=can_start)


def segment(
    number: int,
    lr: float,
    values: dict[int, float],
    state: TrialState,
    **attrs: Any,
) -> FrozenTrial:
    trial = create_trial(
        state=state,
        params={"lr": lr},
        distributions={"lr": CategoricalDistribution([lr])},
        value=list(values.values())[-1] if state == TrialState.COMPLETE else None,
        intermediate_values=values,
        user_attrs=attrs,
    )
    trial.number = number
    return trial


def paused(number: int, lr: float, values: dict[int, float], rung: int, **attrs: Any) -> Config:
    """A configuration paused at ``rung`` after reporting ``values``."""
    return Config(number, {"lr": lr}, tuple(values.items()), "paused", number, False, rung)


def test_segments_group_into_configurations() -> None:
    trials = [
        segment(0, 1.0, {1: 5.0}, TrialState.PRUNED, **{UNTIL_ATTR: 1, PAUSED_AT_ATTR: 1}),
        segment(1, 2.0, {1: 4.0, 2: 3.0}, TrialState.COMPLETE),
        # 0 continued: the continuation re-reported step 1 and went on
        segment(2, 1.0, {1: 5.0, 2: 4.5, 3: 4.0}, TrialState.FAIL, **{CONTINUES_ATTR: 0}),
        # ... its worker died: a retry of the continuation, queued
        segment(3, 1.0, {}, TrialState.WAITING, **{CONTINUES_ATTR: 0, RETRIED_FROM_ATTR: 2}),
        segment(4, 3.0, {1: 9.0}, TrialState.PRUNED, **{INFEASIBLE_RECORD_ATTR: 1}),
        segment(5, 3.0, {1: 6.0}, TrialState.PRUNED, **{UNTIL_ATTR: 1, PAUSED_AT_ATTR: 1}),
    ]
    configs = {c.number: c for c in configurations(trials)}
    assert sorted(configs) == [0, 1, 5]  # the infeasible record is not a configuration
    assert configs[0].status == "running" and configs[0].last_trial == 3
    assert configs[0].values == ((1, 5.0), (2, 4.5), (3, 4.0)) and not configs[0].unpaused
    assert configs[1].status == "complete" and configs[1].final == 3.0 and configs[1].unpaused
    assert configs[5].status == "paused" and configs[5].paused_rung == 1
    assert configs[5].value_at(1) == 6.0 and configs[5].value_at(2) is None


def test_asha_continues_the_best_third_of_a_rung_most_advanced_first() -> None:
    rung1 = [paused(i, float(i), {1: float(i)}, 1) for i in range(6)]
    decision = next_work(rung1, ASHA, can_start=True)
    assert decision == Continue(config=0, trial=0, until=3)
    # two of six are promotable; the one waiting at rung 3 goes first when it qualifies
    at3 = [paused(9, 9.0, {1: 0.5, 3: 0.1}, 3)] + [
        Config(10 + i, {"lr": 10.0 + i}, ((1, 0.6), (3, 0.2 + i)), "complete", 10 + i, True)
        for i in range(2)
    ]
    assert next_work(rung1 + at3, ASHA, can_start=True) == Continue(9, 9, until=9)


def test_cooled_scores_rank_the_rung_they_were_taken_at() -> None:
    """With cool-down scoring a paused configuration ranks by its cooled score at its rung;
    the curve stays as reported, and a rung it passed without a branch ranks by its report."""
    trials = [
        segment(
            0,
            1.0,
            {1: 2.0},
            TrialState.PRUNED,
            **{UNTIL_ATTR: 1, PAUSED_AT_ATTR: 1, COOLED_ATTR: 0.5},
        ),
        segment(
            1,
            2.0,
            {1: 1.0},
            TrialState.PRUNED,
            **{UNTIL_ATTR: 1, PAUSED_AT_ATTR: 1, COOLED_ATTR: 0.9},
        ),
        segment(2, 3.0, {1: 3.0}, TrialState.PRUNED, **{UNTIL_ATTR: 1, PAUSED_AT_ATTR: 1}),
    ]
    configs = {c.number: c for c in configurations(trials)}
    assert configs[0].values == ((1, 2.0),) and configs[0].cooled == ((1, 0.5),)
    assert configs[0].score_at(1) == 0.5 and configs[2].score_at(1) == 3.0
    top_1 = TopKSchedulerSpec(at_steps=1, k=1, min_scored=3, cooldown=True)
    # by the reports, configuration 1 (1.0) is best; cooled, configuration 0 (0.5) is
    assert next_work(list(configs.values()), top_1, can_start=True) == Continue(0, 0, until=None)


def test_cooldown_needs_a_fixed_warmup_stable_decay_schedule() -> None:
    def spec(training: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": "cool",
            "train": {
                "model": {"name_or_path": "builtin:tiny-llama"},
                "dataset": {"path": "builtin:demo-text"},
                "training": training,
            },
            "search": {
                "space": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}, **space},
                "scheduler": {"type": "asha", "min_steps": 64, "cooldown": True},
            },
        }

    wsd = {"lr_scheduler_type": "warmup_stable_decay"}
    assert StudySpec.model_validate(spec(wsd, {})).search.scheduler.type == "asha"
    searched = {"lr_scheduler_type": {"type": "categorical", "choices": ["warmup_stable_decay"]}}
    for training, space in (({}, {}), ({"lr_scheduler_type": "cosine"}, {}), ({}, searched)):
        with pytest.raises(ValidationError, match="fix train.training.lr_scheduler_type"):
            StudySpec.model_validate(spec(training, space))


def test_a_continuing_configuration_is_not_promoted_twice() -> None:
    """The claim makes a configuration running, so the next worker under the lock gets the
    next one: decisions are safe however many workers ask."""
    configs = [paused(i, float(i), {1: float(i)}, 1) for i in range(6)]
    first = next_work(configs, ASHA, can_start=True)
    assert isinstance(first, Continue)
    configs[first.config] = Config(
        first.config, {"lr": 0.0}, configs[first.config].values, "running", 100, False
    )
    second = next_work(configs, ASHA, can_start=True)
    assert isinstance(second, Continue) and second.config != first.config
    configs[second.config] = Config(
        second.config, {"lr": 1.0}, configs[second.config].values, "running", 101, False
    )
    assert next_work(configs, ASHA, can_start=True) == Start(until=1)
    assert next_work(configs, ASHA, can_start=False) == Idle(done=False)
    done = Config(0, {"lr": 0.0}, ((1, 0.0), (9, 0.0)), "complete", 100, False)
    rest = [c for c in configs if c.number in (3, 4, 5)]
    assert next_work([done, *rest], ASHA, can_start=False) == Idle(done=True)


def test_once_nothing_new_may_start_each_rung_still_continues_its_best() -> None:
    """However small the budget, a study under ASHA ends with a configuration trained to its
    end: with nothing new to start, a rung's best continues even below a full 1/eta share."""
    alone = [paused(0, 1.0, {1: 1.0}, 1), paused(1, 2.0, {1: 2.0}, 1)]
    assert next_work(alone, ASHA, can_start=True) == Start(until=1)
    assert next_work(alone, ASHA, can_start=False) == Continue(0, 0, until=3)


def test_twins_rank_once_and_train_once() -> None:
    """A sampler proposing the same params again must not crowd others out of a rung."""
    twins = [paused(i, 1.0, {1: 1.0}, 1) for i in range(4)]
    others = [paused(10 + i, 2.0 + i, {1: 2.0 + i}, 1) for i in range(5)]
    assert next_work(twins + others, ASHA, can_start=True) == Continue(0, 0, until=3)
    went_on = Config(0, {"lr": 1.0}, ((1, 1.0), (2, 1.5)), "running", 50, False)
    # 6 distinct configurations reached rung 1: two promotions, the twins' and 10's
    assert next_work([went_on] + twins[1:] + others, ASHA, can_start=True) == Continue(
        10, 10, until=3
    )


def test_maximize_ranks_the_other_way() -> None:
    configs = [paused(i, float(i), {1: float(i)}, 1) for i in range(3)]
    assert next_work(configs, ASHA, can_start=True, minimize=False) == Continue(2, 2, until=3)


def test_no_scheduler_always_starts_a_full_configuration() -> None:
    assert next_work([], NoSchedulerSpec(), can_start=True) == Start(until=None)
    assert next_work([], NoSchedulerSpec(), can_start=False) == Idle(done=True)


def test_top_k_scores_enough_configurations_before_continuing_any() -> None:
    spec = TopKSchedulerSpec(at_steps=2, k=2, min_scored=4)
    configs = [paused(i, float(i), {2: float(i)}, 2) for i in range(3)]
    assert next_work(configs, spec, can_start=True) == Start(until=2)
    # no new configuration may start: the scoring is over, the best k continue to the end
    assert next_work(configs, spec, can_start=False) == Continue(0, 0, until=None)
    configs.append(paused(3, 3.0, {2: -1.0}, 2))
    assert next_work(configs, spec, can_start=True) == Continue(3, 3, until=None)


def _unpaused(n: int, early: list[float], final: list[float]) -> list[Config]:
    return [
        Config(i, {"lr": float(i)}, ((1, e), (3, (e + f) / 2), (9, f)), "complete", i, True)
        for i, (e, f) in enumerate(zip(early[:n], final[:n], strict=True))
    ]


ADAPTIVE = AdaptiveSchedulerSpec(min_steps=1, min_pairs=8, audit_every=4)


def test_adaptive_measures_before_it_pauses_and_trusts_only_agreeing_rungs() -> None:
    agree = _unpaused(13, [float(i) for i in range(13)], [float(i) for i in range(13)])
    assert next_work(agree[:7], ADAPTIVE, can_start=True) == Start(until=None)  # measuring
    assert trusted_rungs(agree, ADAPTIVE) == (1, 3)
    assert next_work(agree, ADAPTIVE, can_start=True) == Start(until=1)
    # crossing curves: the early rung ranks backwards, the middle one agrees
    cross = _unpaused(12, [float(-i) for i in range(12)], [float(i) for i in range(12)])
    agreement = {a.rung: a for a in rung_agreement(cross, (1, 3), min_pairs=8)}
    assert agreement[1].rho == pytest.approx(-1.0) and agreement[1].pairs == 12
    assert trusted_rungs(cross, ADAPTIVE) == ()
    assert next_work(cross, ADAPTIVE, can_start=True) == Start(until=None)


def test_adaptive_audits_every_nth_configuration_and_frees_paused_ones_when_trust_goes() -> None:
    agree = _unpaused(12, [float(i) for i in range(12)], [float(i) for i in range(12)])
    waiting = paused(12, 99.0, {1: 50.0}, 1)
    # 13 configurations: the next one (index 13) pauses, the one after (index 16) would audit
    assert next_work([*agree, waiting], ADAPTIVE, can_start=True) == Start(until=1)
    three = [paused(12 + i, 99.0 + i, {1: 50.0 + i}, 1) for i in range(4)]
    assert next_work([*agree, *three], ADAPTIVE, can_start=True) == Start(until=None)
    cross = _unpaused(12, [float(-i) for i in range(12)], [float(i) for i in range(12)])
    # rung 1 lost its trust: what waits there continues to the end, whatever its score
    assert next_work([*cross, waiting], ADAPTIVE, can_start=True) == Continue(12, 12, None)


def test_spearman_and_its_lower_bound() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(0.894, abs=1e-3)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert fisher_lower_bound(0.9, 8) < fisher_lower_bound(0.9, 30) < 0.9
    assert fisher_lower_bound(0.9, 8) == pytest.approx(0.61, abs=0.01)


def test_scheduler_specs_check_themselves() -> None:
    space = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}
    with pytest.raises(ValidationError, match="needs pruner 'none'"):
        SearchSpec.model_validate(
            {
                "space": space,
                "pruner": {"type": "median"},
                "scheduler": {"type": "asha", "min_steps": 64},
            }
        )
    with pytest.raises(ValidationError, match="min_scored must be >= k"):
        TopKSchedulerSpec(at_steps=10, k=5, min_scored=3)
    search = SearchSpec.model_validate(
        {"space": space, "scheduler": {"type": "adaptive", "min_steps": 64}}
    )
    assert SearchSpec.model_validate(search.model_dump(mode="json")) == search


def test_segments_work_with_a_real_study() -> None:
    """The representation holds in Optuna: a paused segment is PRUNED, its continuation an
    enqueued trial with the same params, popped by ask."""
    study = optuna.create_study()
    first = study.ask()
    first.suggest_float("lr", 1e-5, 1e-3, log=True)
    first.set_user_attr(UNTIL_ATTR, 1)
    first.report(2.0, 1)
    first.set_user_attr(PAUSED_AT_ATTR, 1)
    study.tell(first, state=TrialState.PRUNED)
    (config,) = configurations(study.get_trials())
    decision = next_work([config], ASHA, can_start=False)
    assert decision == Continue(0, 0, until=3)
    study.enqueue_trial(first.params, user_attrs={CONTINUES_ATTR: decision.trial})
    second = study.ask()
    assert second.suggest_float("lr", 1e-5, 1e-3, log=True) == first.params["lr"]
    (config,) = configurations(study.get_trials())
    assert config.status == "running" and config.last_trial == 1
    assert next_work([config], ASHA, can_start=False) == Idle(done=False)
