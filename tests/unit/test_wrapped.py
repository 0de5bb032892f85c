"""A wrapped sampler samples exactly as the sampler it wraps."""

from __future__ import annotations

import optuna

from hpo.core.wrapped import WrappedSampler


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5, 5)
    rank = trial.suggest_categorical("rank", [4, 16, 64])
    return (x - 1) ** 2 + rank / 64


def _params(sampler: optuna.samplers.BaseSampler) -> list[dict[str, object]]:
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective, n_trials=15)
    return [t.params for t in study.trials]


def test_every_call_reaches_the_base_sampler() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    # TPE past its startup trials uses the relative search space, relative and independent
    # sampling and after_trial (constant liar): any call not forwarded changes the proposals.
    def tpe() -> optuna.samplers.TPESampler:
        return optuna.samplers.TPESampler(
            seed=3, n_startup_trials=4, multivariate=True, constant_liar=True
        )

    plain, wrapped = _params(tpe()), _params(WrappedSampler(tpe()))
    assert plain == wrapped
    assert len({p["x"] for p in plain}) == len(plain)  # a real search, not one point
