"""A repeat of a tried configuration of a finite space becomes the nearest untried one."""

from __future__ import annotations

import numpy as np
import optuna

from hpo.core.records import PAUSED_AT_ATTR
from hpo.core.untried import UntriedSampler, nearest_untried

CHOICES = [[1e-5, 1e-4, 1e-3], [8, 16, 32]]


def test_an_untried_proposal_stands() -> None:
    rng = np.random.default_rng(0)
    assert nearest_untried((1e-4, 16), {(1e-5, 8)}, CHOICES, rng) == (1e-4, 16)


def test_a_repeat_moves_one_grid_step() -> None:
    rng = np.random.default_rng(0)
    tried = {(1e-4, 16), (1e-4, 8), (1e-5, 16)}
    moved = nearest_untried((1e-4, 16), tried, CHOICES, rng)
    assert moved in {(1e-4, 32), (1e-3, 16)}  # the two untried neighbours one step away


def test_ties_are_drawn_and_a_full_grid_gives_none() -> None:
    seen = {
        nearest_untried((1e-4, 16), {(1e-4, 16)}, CHOICES, np.random.default_rng(s))
        for s in range(20)
    }
    assert seen == {(1e-5, 16), (1e-3, 16), (1e-4, 8), (1e-4, 32)}
    every = {(a, b) for a in CHOICES[0] for b in CHOICES[1]}
    assert nearest_untried((1e-4, 16), every, CHOICES, np.random.default_rng(0)) is None


def test_tpe_never_repeats_a_configuration_while_untried_ones_remain() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    plain = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    wrapped = optuna.create_study(
        sampler=UntriedSampler(optuna.samplers.TPESampler(seed=0, n_startup_trials=2), seed=0)
    )

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_categorical("lr", CHOICES[0])
        batch = trial.suggest_categorical("batch", CHOICES[1])
        return abs(np.log10(lr) + 4) + abs(batch - 16) / 8

    plain.optimize(objective, n_trials=9)
    wrapped.optimize(objective, n_trials=9)
    configs = [tuple(t.params.values()) for t in wrapped.trials]
    assert len(set(configs)) >= 9 - 2  # only the random startup trials may repeat
    assert len({tuple(t.params.values()) for t in plain.trials}) < len(set(configs))


def test_a_space_too_large_to_walk_is_left_alone() -> None:
    space = {f"p{i}": optuna.distributions.CategoricalDistribution([0, 1, 2, 3]) for i in range(8)}
    study = optuna.create_study()
    for _ in range(2):
        study.enqueue_trial({name: 0 for name in space})
        study.tell(study.ask(space), 0.0)

    class Repeats(optuna.samplers.RandomSampler):
        def sample_relative(self, *args: object) -> dict[str, object]:
            return {name: 0 for name in space}

    sampler = UntriedSampler(Repeats(), seed=0)
    trial = study.ask()
    frozen = study._storage.get_trial(trial._trial_id)  # noqa: SLF001 - the sampler's view
    assert sampler.sample_relative(study, frozen, space) == {name: 0 for name in space}


def test_a_paused_configuration_is_tried_and_a_pruned_one_is_not() -> None:
    """A scheduler's paused configuration (PRUNED to Optuna, with its rung) continues from
    its state: proposing it again would train a twin. A pruner's stop leaves it untried."""
    space = {"lr": optuna.distributions.CategoricalDistribution(list(CHOICES[0]))}

    class Repeats(optuna.samplers.RandomSampler):
        def sample_relative(self, *args: object) -> dict[str, object]:
            return {"lr": CHOICES[0][0]}

    def proposal(paused: bool) -> object:
        study = optuna.create_study()
        study.enqueue_trial({"lr": CHOICES[0][0]})
        first = study.ask(space)
        if paused:
            first.set_user_attr(PAUSED_AT_ATTR, 1)
        study.tell(first, state=optuna.trial.TrialState.PRUNED)
        trial = study.ask()
        frozen = study._storage.get_trial(trial._trial_id)  # noqa: SLF001 - the sampler's view
        return UntriedSampler(Repeats(), seed=0).sample_relative(study, frozen, space)["lr"]

    assert proposal(paused=False) == CHOICES[0][0]
    assert proposal(paused=True) == CHOICES[0][1]  # the one untried neighbour
