"""Population-based training: pure decisions over a population of LoRA adapters."""

from __future__ import annotations

import random
from typing import Any

import pytest
from optuna.distributions import FloatDistribution as OptunaFloat
from optuna.trial import FrozenTrial, TrialState, create_trial
from pydantic import ValidationError

from hpo.core.pbt import (
    SLOT_ATTR,
    ContinueMember,
    Member,
    exploit,
    explore,
    members,
    pbt_next,
)
from hpo.core.scheduling import PAUSED_AT_ATTR, Idle, Start
from hpo.core.spec import PBTSchedulerSpec, SearchSpace, SearchSpec

SPACE = SearchSpace.model_validate(
    {
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "step": 0.01},
        "lora_dropout": {"type": "categorical", "choices": [0.0, 0.05, 0.1]},
        "lora_r": {"type": "categorical", "choices": [8, 16, 64]},
    }
)
SPEC = PBTSchedulerSpec(population_size=4, interval_steps=100, quantile=0.25)


def member(slot: int, score: float | None, step: int = 100, state: str = "paused") -> Member:
    params = {
        "learning_rate": 1e-4 * (slot + 1),
        "weight_decay": 0.05,
        "lora_dropout": 0.05,
        "lora_r": [8, 16, 64, 16][slot % 4],
    }
    return Member(slot, 10 + slot, params, step, score, state)


def test_the_population_fills_first_then_the_member_that_trained_least_decides() -> None:
    assert pbt_next([member(0, 1.0)], SPEC, SPACE, seed=0) == Start(until=100)
    population = [
        member(0, 1.0, 200),
        member(1, 2.0, 100),
        member(2, 1.5, 300),
        member(3, 0.5, 100, "running"),
    ]
    decision = pbt_next(population, SPEC, SPACE, seed=0)
    assert isinstance(decision, ContinueMember) and decision.slot == 1
    everyone_running = [member(i, 1.0, 100, "running") for i in range(4)]
    assert pbt_next(everyone_running, SPEC, SPACE, seed=0) == Idle(done=False)


def test_the_bottom_member_copies_a_top_one_and_perturbs_only_what_is_mutable() -> None:
    population = [member(0, 0.5), member(1, 1.0), member(2, 1.5), member(3, 3.0)]
    # pure: the same population and seed give the same decision
    assert pbt_next(population, SPEC, SPACE, seed=7) == pbt_next(population, SPEC, SPACE, seed=7)
    # make slot 3 (the worst) the one that trained least: it exploits slot 0, the best
    population[3] = member(3, 3.0, step=50)
    decision = pbt_next(population, SPEC, SPACE, seed=7)
    assert isinstance(decision, ContinueMember)
    assert decision.slot == 3 and decision.trial == 10  # slot 0's checkpoint
    assert decision.until == 200  # the donor's step + one interval
    lineage = decision.lineage
    assert lineage is not None and lineage.parent == 10 and lineage.step == 100
    assert {p.name for p in lineage.perturbations} == {
        "learning_rate",
        "weight_decay",
        "lora_dropout",
    }
    assert decision.params["lora_r"] == population[0].params["lora_r"]  # comes with the state
    for p in lineage.perturbations:
        assert decision.params[p.name] == p.new and p.old == population[0].params[p.name]
    assert lineage.to_attr()["parent"] == 10


def test_a_member_outside_the_bottom_quantile_keeps_its_own_state() -> None:
    population = [member(0, 0.5, 50), member(1, 1.0), member(2, 1.5), member(3, 3.0)]
    decision = pbt_next(population, SPEC, SPACE, seed=0)
    assert decision == ContinueMember(0, 10, population[0].params, 150)
    maximize = pbt_next(population, SPEC, SPACE, seed=0, minimize=False)
    assert isinstance(maximize, ContinueMember) and maximize.lineage is not None


def test_exploit_needs_a_scored_population_and_never_copies_a_finished_member() -> None:
    rng = random.Random(0)
    alone = [member(0, 1.0), member(1, None)]
    assert exploit(alone, alone[0], quantile=0.25, rng=rng) is None
    done = [member(0, 0.1, state="complete"), member(1, 1.0), member(2, 2.0)]
    donor = exploit(done, done[2], quantile=0.25, rng=rng)
    assert donor is not None and donor.slot == 1


@pytest.mark.parametrize("seed", range(20))
def test_explore_stays_inside_the_space(seed: int) -> None:
    params = {"learning_rate": 1e-3, "weight_decay": 0.0, "lora_dropout": 0.1, "lora_r": 8}
    new, changes = explore(params, SPACE, SPEC, rng=random.Random(seed))
    assert 1e-5 <= new["learning_rate"] <= 1e-3
    assert any(abs(new["weight_decay"] - 0.01 * i) < 1e-12 for i in range(11))
    assert new["lora_dropout"] in (0.0, 0.05, 0.1) and new["lora_r"] == 8
    for change in changes:
        assert change.how in ("x0.8", "x1.2", "resampled")


def test_explore_moves_an_ordered_categorical_one_choice() -> None:
    spec = PBTSchedulerSpec(interval_steps=10, resample_probability=0.0, mutable=("lora_dropout",))
    moved = {
        explore({"lora_dropout": 0.05}, SPACE, spec, rng=random.Random(s))[0]["lora_dropout"]
        for s in range(10)
    }
    assert moved == {0.0, 0.1}


def _segment(
    number: int, slot: int, values: dict[int, float], state: TrialState, **attrs: Any
) -> FrozenTrial:
    trial = create_trial(
        state=state,
        params={"learning_rate": 1e-4},
        distributions={"learning_rate": OptunaFloat(1e-5, 1e-3, log=True)},
        value=1.0 if state == TrialState.COMPLETE else None,
        intermediate_values=values,
        user_attrs={SLOT_ATTR: slot, **attrs},
    )
    trial.number = number
    return trial


def test_members_are_read_at_their_latest_checkpoint() -> None:
    trials = [
        _segment(0, 0, {100: 2.0}, TrialState.PRUNED, **{PAUSED_AT_ATTR: 100}),
        _segment(1, 1, {100: 1.0}, TrialState.PRUNED, **{PAUSED_AT_ATTR: 100}),
        _segment(2, 1, {200: 0.8}, TrialState.RUNNING),
        _segment(3, 0, {200: 3.0}, TrialState.FAIL),
    ]
    by_slot = {m.slot: m for m in members(trials)}
    assert by_slot[1] == Member(1, 1, {"learning_rate": 1e-4}, 100, 1.0, "running")
    assert by_slot[0].trial == 0 and by_slot[0].state == "stopped" and by_slot[0].step == 100


def test_pbt_spec_checks_its_mutable_hyperparameters() -> None:
    space = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}
    search = SearchSpec.model_validate(
        {"space": space, "scheduler": {"type": "pbt", "interval_steps": 64}}
    )
    assert search.scheduler.type == "pbt"
    with pytest.raises(ValidationError, match="does not search"):
        SearchSpec.model_validate(
            {
                "space": space,
                "scheduler": {"type": "pbt", "interval_steps": 64, "mutable": ["lora_dropout"]},
            }
        )
    with pytest.raises(ValidationError, match="needs one of"):
        SearchSpec.model_validate(
            {
                "space": {"lora_r": {"type": "int", "low": 4, "high": 8}},
                "scheduler": {"type": "pbt", "interval_steps": 64},
            }
        )
    with pytest.raises(ValidationError, match="perturbation_factors"):
        PBTSchedulerSpec(interval_steps=1, perturbation_factors=(1.2, 0.8))
