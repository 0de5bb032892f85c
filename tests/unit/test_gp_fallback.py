"""GP proposes while it sees every trial of the study; TPE once a trial is PRUNED or many."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from hpo.core.gp_fallback import GPOrTPE, gp_sees_everything

SPACE = {
    "learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
    "lora_r": CategoricalDistribution([4, 16, 64]),
}


def _trials(pruned: bool) -> list[FrozenTrial]:
    done = [
        create_trial(
            params={"learning_rate": lr, "lora_r": r}, distributions=SPACE, value=abs(lr - 2e-4)
        )
        for lr, r in ((1e-5, 4), (1e-4, 16), (1e-3, 64), (3e-4, 4), (5e-5, 64))
    ]
    if pruned:  # e.g. the worker's record of an out-of-memory configuration
        record = create_trial(
            state=TrialState.PRUNED,
            params={"learning_rate": 2e-4, "lora_r": 64},
            distributions=SPACE,
        )
        record.set_constraint("oom", 1.0)
        done.append(record)
    return done


def _ask(sampler: optuna.samplers.BaseSampler, trials: list[FrozenTrial]) -> dict[str, Any]:
    study = optuna.create_study(sampler=sampler)
    study.add_trials(trials)
    return study.ask(SPACE).params


def _gp() -> optuna.samplers.GPSampler:
    return optuna.samplers.GPSampler(seed=0, n_startup_trials=4)


def _tpe() -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=0, n_startup_trials=4, multivariate=True)


@pytest.mark.parametrize(("pruned", "alone"), [(False, _gp), (True, _tpe)])
def test_each_trial_is_the_chosen_samplers_proposal(pruned: bool, alone: Any) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    trials = _trials(pruned)
    assert _ask(GPOrTPE(_gp(), _tpe()), trials) == _ask(alone(), trials)
    assert _ask(_gp(), trials) != _ask(_tpe(), trials)  # the two are told apart


def test_gp_only_while_it_sees_everything_and_the_study_is_small() -> None:
    assert gp_sees_everything(_trials(pruned=False), max_gp_trials=5)
    assert not gp_sees_everything(_trials(pruned=False), max_gp_trials=4)
    assert not gp_sees_everything(_trials(pruned=True), max_gp_trials=100)


def _running(number: int, params: dict[str, Any]) -> FrozenTrial:
    dists = {name: SPACE[name] for name in params}
    trial = create_trial(state=TrialState.RUNNING, params=params, distributions=dists)
    trial.number = number
    return trial


def test_a_trial_asked_while_another_is_being_sampled_goes_to_tpe() -> None:
    """Two workers asking at once would get GP's same point: a running trial without its
    parameters yet means another ask is under way."""
    done = _trials(pruned=False)
    sampled = _running(10, {"learning_rate": 2e-4, "lora_r": 16})
    assert gp_sees_everything([*done, sampled], max_gp_trials=100, number=11)
    for unsampled in ({}, {"learning_rate": 2e-4}):
        trials = [*done, _running(10, unsampled), _running(11, {})]
        assert not gp_sees_everything(trials, max_gp_trials=100, number=11)
        assert gp_sees_everything(trials[:-2] + [trials[-1]], max_gp_trials=100, number=11)
