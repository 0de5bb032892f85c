"""TPE with a warm start's ranking as a prior: it starts where the sources were best, drops the
prior at its horizon, and lets the study's own trials speak for the configurations it tried."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState, create_trial

from hpo.core.prior_tpe import PriorTPE
from hpo.core.warm_start import Ranked

STEPS = list(range(6))
SPACE: dict[str, BaseDistribution] = {
    "x": CategoricalDistribution(STEPS),
    "y": CategoricalDistribution(STEPS),
}
SEEDS = range(20)


def _tpe(seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=4, multivariate=True, constant_liar=True
    )


def _corner_prior() -> list[Ranked]:
    """Every configuration of the grid, the sources' best at (0, 0), worst at (5, 5)."""
    configs = [{"x": x, "y": y} for x in STEPS for y in STEPS]
    configs.sort(key=lambda p: p["x"] + p["y"])
    return [Ranked(p, i / (len(configs) - 1)) for i, p in enumerate(configs)]


def _near_corner(params: dict[str, Any]) -> bool:
    return params["x"] + params["y"] <= 2  # 6 of the 36 configurations


def _first(sampler: optuna.samplers.BaseSampler) -> dict[str, Any]:
    study = optuna.create_study(sampler=sampler)
    return study.ask(fixed_distributions=SPACE).params


def _history(study: optuna.Study, n: int) -> None:
    """``n`` completed trials away from the corner, the same for every study."""
    study.add_trials(
        create_trial(params={"x": 5 - i % 3, "y": 3 + i % 3}, distributions=SPACE, value=float(i))
        for i in range(n)
    )


def _proposals(sampler: optuna.samplers.BaseSampler, completed: int) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=sampler)
    _history(study, completed)
    out = []
    for _ in range(5):
        trial = study.ask(fixed_distributions=SPACE)
        out.append(trial.params)
        study.tell(trial, float(trial.params["x"] + trial.params["y"]))
    return out


def test_a_fresh_study_starts_where_the_prior_ranks_best() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    prior = sum(_near_corner(_first(PriorTPE(_tpe(s), _corner_prior(), SPACE))) for s in SEEDS)
    cold = sum(_near_corner(_first(_tpe(s))) for s in SEEDS)
    # a cold TPE's first trial is random: 1 in 6 lands near the corner
    assert prior >= len(SEEDS) / 2, (prior, cold)
    assert prior > 2 * cold, (prior, cold)


def test_the_prior_is_dropped_at_the_horizon() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    horizon = 10
    plain = _proposals(_tpe(7), horizon)
    assert _proposals(PriorTPE(_tpe(7), _corner_prior(), SPACE, horizon=horizon), horizon) == plain
    # one more own result to go: the prior still pulls the proposals
    before = _proposals(PriorTPE(_tpe(7), _corner_prior(), SPACE, horizon=horizon + 1), horizon)
    assert before != plain


def test_a_configuration_the_study_tried_leaves_the_prior() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler = PriorTPE(_tpe(0), _corner_prior(), SPACE)
    study = optuna.create_study(sampler=sampler)
    study.add_trial(
        create_trial(state=TrialState.FAIL, params={"x": 0, "y": 0}, distributions=SPACE)
    )
    study.add_trial(create_trial(params={"x": 0, "y": 1}, distributions=SPACE, value=3.0))
    trial = study.ask()
    view = sampler.view(study, study._storage.get_trial(trial._trial_id))  # noqa: SLF001
    done = view.get_trials(states=(TrialState.COMPLETE,))
    configs = [(t.params["x"], t.params["y"]) for t in done]
    assert (0, 0) not in configs  # it failed here: not proposed again on the sources' word
    assert configs.count((0, 1)) == 1  # the study's own result, not also the prior's
    assert len(configs) == len(STEPS) ** 2 - 1
