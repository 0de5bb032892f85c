"""Population-based training: pure decisions over a population of LoRA adapters."""

from __future__ import annotations

import random
from typing import Any

import pytest
from optuna.distributions import FloatDistribution as OptunaFloat
from optuna.trial import FrozenTrial, TrialState, create_trial
from pydantic import ValidationError

from hpo.core.records import PAUSED_AT_ATTR, SLOT_ATTR
from hpo.core.schedulers import Idle, Start
from hpo.core.schedulers.pbt import (
    Checkpoint,
    ContinueMember,
    Member,
    exploit,
    explore,
    members,
    pbt_next,
)
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


def member(
    slot: int,
    score: float | None,
    step: int = 100,
    state: str = "paused",
    earlier: dict[int, float] | None = None,
) -> Member:
    """Slot ``slot`` at its checkpoint (trial 10 + slot) at ``step``, having saved the
    ``earlier`` scores by step before (trials 20 + slot, 30 + slot, ...)."""
    params = {
        "learning_rate": 1e-4 * (slot + 1),
        "weight_decay": 0.05,
        "lora_dropout": 0.05,
        "lora_r": [8, 16, 64, 16][slot % 4],
    }
    saved = [
        Checkpoint(at, 10 * (i + 2) + slot, params, value)
        for i, (at, value) in enumerate(sorted((earlier or {}).items()))
    ]
    if score is not None:
        saved.append(Checkpoint(step, 10 + slot, params, score))
    return Member(slot, 10 + slot, params, step, score, state, tuple(saved))


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


def ahead(slot: int, score_at_100: float) -> Member:
    """Slot ``slot`` paused at 200 (better than anyone at 100), its checkpoint at 100 kept."""
    return member(slot, 0.1 * (slot + 1), step=200, earlier={100: score_at_100})


def test_the_bottom_member_copies_a_top_one_and_perturbs_only_what_is_mutable() -> None:
    population = [ahead(0, 0.5), ahead(1, 1.0), ahead(2, 1.5), member(3, 3.0)]
    # pure: the same population and seed give the same decision
    assert pbt_next(population, SPEC, SPACE, seed=7) == pbt_next(population, SPEC, SPACE, seed=7)
    # slot 3, behind at 100 and the worst there, copies slot 0's checkpoint at 100
    decision = pbt_next(population, SPEC, SPACE, seed=7)
    assert isinstance(decision, ContinueMember)
    assert decision.slot == 3 and decision.trial == 20  # slot 0's checkpoint at 100
    assert decision.until == 200  # one interval on from there: it trains what it copied
    lineage = decision.lineage
    assert lineage is not None and lineage.parent == 20 and lineage.step == 100
    assert {p.name for p in lineage.perturbations} == {
        "learning_rate",
        "weight_decay",
        "lora_dropout",
    }
    assert decision.params["lora_r"] == population[0].params["lora_r"]  # comes with the state
    for p in lineage.perturbations:
        assert decision.params[p.name] == p.new and p.old == population[0].params[p.name]
    assert lineage.to_attr()["parent"] == 20


def test_a_member_outside_the_bottom_quantile_keeps_its_own_state() -> None:
    population = [member(0, 0.5), member(1, 1.0), member(2, 1.5), member(3, 3.0)]
    decision = pbt_next(population, SPEC, SPACE, seed=0)
    assert decision == ContinueMember(0, 10, population[0].params, 200)
    maximize = pbt_next(population, SPEC, SPACE, seed=0, minimize=False)
    assert isinstance(maximize, ContinueMember) and maximize.lineage is not None


def test_a_member_behind_is_ranked_at_its_own_step() -> None:
    """Slot 3 at 100 is worse than every score the others reported at 200, but second of
    four at 100: it keeps its own state."""
    population = [ahead(0, 0.5), ahead(1, 1.5), ahead(2, 2.0), member(3, 1.0)]
    decision = pbt_next(population, SPEC, SPACE, seed=0)
    assert decision == ContinueMember(3, 13, population[3].params, 200)


def test_exploit_ranks_the_checkpoints_at_the_step_finished_members_included() -> None:
    rng = random.Random(0)
    alone = [member(0, 1.0), member(1, None)]
    assert exploit(alone, alone[0], quantile=0.25, rng=rng) is None
    done = [member(0, 0.05, 300, "complete", earlier={100: 0.1}), member(1, 1.0), member(2, 2.0)]
    donor = exploit(done, done[2], quantile=0.25, rng=rng)
    assert donor == Checkpoint(100, 20, done[0].params, 0.1)
    nobody_there = [member(0, 0.5, 200), member(1, 2.0)]
    assert exploit(nobody_there, nobody_there[1], quantile=0.5, rng=rng) is None


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
    params = {"learning_rate": 1e-4}
    assert by_slot[1] == Member(
        1, 1, params, 100, 1.0, "running", (Checkpoint(100, 1, params, 1.0),)
    )
    assert by_slot[0].trial == 0 and by_slot[0].state == "stopped" and by_slot[0].step == 100
    assert by_slot[0].at(100) == Checkpoint(100, 0, params, 2.0) and by_slot[0].at(200) is None


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
