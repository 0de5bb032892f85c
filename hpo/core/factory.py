"""Builds Optuna samplers, pruners and parameter suggestions from a study spec.

The API (dry-run checks, enqueue validation), the worker and the simulator all go through
this module, so a study searches the same way wherever it runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, assert_never

import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution as OptunaCategorical
from optuna.distributions import FloatDistribution as OptunaFloat
from optuna.distributions import IntDistribution as OptunaInt
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial

from hpo.core import records
from hpo.core.errors import SpecError
from hpo.core.gp_fallback import GPOrTPE
from hpo.core.prior_tpe import PriorTPE
from hpo.core.spec import (
    CategoricalDistribution,
    CmaEsSamplerSpec,
    Distribution,
    FloatDistribution,
    GPSamplerSpec,
    GridSamplerSpec,
    HyperbandPrunerSpec,
    MedianPrunerSpec,
    NopPrunerSpec,
    PercentilePrunerSpec,
    PrunerSpec,
    QMCSamplerSpec,
    RandomSamplerSpec,
    SearchSpec,
    SuccessiveHalvingPrunerSpec,
    TPESamplerSpec,
)
from hpo.core.transfer import TransferSampler
from hpo.core.untried import UntriedSampler
from hpo.core.warm_start import Ranked


def to_optuna_distribution(dist: Distribution) -> BaseDistribution:
    """The Optuna distribution equivalent to a spec distribution."""
    if isinstance(dist, FloatDistribution):
        return OptunaFloat(dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, CategoricalDistribution):
        return OptunaCategorical(dist.choices)
    return OptunaInt(dist.low, dist.high, log=dist.log, step=dist.step)


def optuna_distributions(search: SearchSpec) -> dict[str, BaseDistribution]:
    return {name: to_optuna_distribution(d) for name, d in search.space.items()}


def suggest_params(trial: optuna.Trial, search: SearchSpec) -> dict[str, Any]:
    """Sample every searched hyperparameter on ``trial``."""
    return {
        name: trial._suggest(name, dist)  # noqa: SLF001 - one call for every distribution type
        for name, dist in optuna_distributions(search).items()
    }


def check_params(search: SearchSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Validate a (partial) configuration against the search space; return it normalised.

    Raises:
        SpecError: A name is not searched or a value lies outside its distribution.
    """
    dists = optuna_distributions(search)
    checked: dict[str, Any] = {}
    for name, value in params.items():
        if name not in dists:
            raise SpecError(
                f"{name!r} is not in the study's search space {sorted(dists)}.",
                loc=("params", name),
            )
        dist = dists[name]
        if isinstance(dist, OptunaInt) and isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = not isinstance(value, bool) or isinstance(dist, OptunaCategorical)
        try:
            ok = ok and dist._contains(dist.to_internal_repr(value))  # noqa: SLF001 - Optuna's range check
        except (ValueError, TypeError):
            ok = False
        if not ok:
            raise SpecError(f"{value!r} is outside {dist}.", loc=("params", name))
        checked[name] = value
    return checked


class NumberedQMCSampler(optuna.samplers.QMCSampler):
    """Optuna's QMC sampler, with each trial's point of the sequence chosen by its number.

    Optuna picks the next point with a study counter it reads and writes without a lock, so
    workers sampling at the same moment get the same point. A trial number is unique by
    construction: gaps (enqueued or retried trials) skip points, nothing repeats one. The
    space is the spec's, known up front: Optuna's QMC draws a study's first trials from a
    random sampler under the shared seed until one has parameters, so workers starting
    together drew the same first configuration.
    """

    _trial_number = 0

    def __init__(self, space: dict[str, BaseDistribution], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._space = space

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._space

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._trial_number = trial.number
        return super().sample_relative(study, trial, search_space)

    def _find_sample_id(self, study: optuna.Study, search_space: dict[str, Any]) -> int:
        return self._trial_number


def build_sampler(
    search: SearchSpec, *, seed_offset: int = 0, prior: Sequence[Ranked] = ()
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler ``search`` names; TPE fitted to ``prior`` too (a warm start's
    ranking, ``hpo.core.prior_tpe``) until the study has its own results, other samplers
    ignore it.

    Each process that samples for one study must pass its own ``seed_offset``: samplers
    with equal seeds in parallel workers would propose the same configurations. Grid and
    QMC are the exception: they walk one shared sequence (grid ids, Sobol/Halton indices kept
    in the study), which only means the same thing in every process under the same seed.
    """
    sampler = search.sampler
    shared = isinstance(sampler, GridSamplerSpec | QMCSamplerSpec)
    offset = 0 if shared else seed_offset
    seed = None if sampler.seed is None else (sampler.seed + offset) % 2**32
    if isinstance(sampler, GPSamplerSpec):
        return _gp_sampler(sampler, seed)
    if isinstance(sampler, TPESamplerSpec):
        # README "Search defaults": no repeats of a finite space's configurations, a short
        # random start (the spec's default) and the LoRA prior first cut the cost to 0.1% on
        # every curve set and worker count of bench.search_default.
        tpe = optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=sampler.n_startup_trials,
            multivariate=sampler.multivariate,
            constant_liar=sampler.constant_liar,
        )
        base: optuna.samplers.BaseSampler = tpe
        if prior:
            base = PriorTPE(tpe, prior, optuna_distributions(search))
        return UntriedSampler(base, seed=seed, prior_first=True)
    if isinstance(sampler, RandomSamplerSpec):
        return optuna.samplers.RandomSampler(seed=seed)
    if isinstance(sampler, GridSamplerSpec):
        grid = {name: d.values() for name, d in search.space.items()}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if isinstance(sampler, CmaEsSamplerSpec):
        return optuna.samplers.CmaEsSampler(
            seed=seed,
            n_startup_trials=sampler.n_startup_trials,
            warn_independent_sampling=False,
        )
    if isinstance(sampler, QMCSamplerSpec):
        with warnings.catch_warnings():  # experimental in Optuna; chosen on purpose
            warnings.simplefilter("ignore", ExperimentalWarning)
            return NumberedQMCSampler(
                optuna_distributions(search),
                seed=seed,
                qmc_type=sampler.qmc_type,
                scramble=sampler.scramble,
                warn_independent_sampling=False,
            )
    assert_never(sampler)


def _gp_sampler(sampler: GPSamplerSpec, seed: int | None) -> optuna.samplers.BaseSampler:
    """Optuna's GP with TPE's rules (README "Search defaults": a short random start, the
    spec's default; the LoRA prior first; no repeats), which cut plain GP's cost to 0.1% or
    kept it level in every cell of bench.search_default. No constant liar: Optuna's GP
    conditions on running trials. TPE takes over where GP would be blind or slow
    (hpo.core.gp_fallback)."""
    gp = optuna.samplers.GPSampler(seed=seed, n_startup_trials=sampler.n_startup_trials)
    tpe = optuna.samplers.TPESampler(
        # Both start with random draws: on one seed, TPE's first would repeat GP's first.
        seed=None if seed is None else (seed + 1) % 2**32,
        n_startup_trials=sampler.n_startup_trials,
        multivariate=True,
        constant_liar=True,
    )
    return UntriedSampler(GPOrTPE(gp, tpe), seed=seed, prior_first=True)


def build_pruner(pruner: PrunerSpec) -> optuna.pruners.BasePruner:
    """The Optuna pruner a spec names."""
    if isinstance(pruner, MedianPrunerSpec | PercentilePrunerSpec):
        percentile = 50.0 if isinstance(pruner, MedianPrunerSpec) else pruner.percentile
        return optuna.pruners.PercentilePruner(
            percentile,
            n_startup_trials=pruner.n_startup_trials,
            n_warmup_steps=pruner.n_warmup_steps,
            interval_steps=pruner.interval_steps,
            n_min_trials=pruner.n_min_trials,
        )
    if isinstance(pruner, SuccessiveHalvingPrunerSpec):
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_resource,
            reduction_factor=pruner.reduction_factor,
            min_early_stopping_rate=pruner.min_early_stopping_rate,
        )
    if isinstance(pruner, HyperbandPrunerSpec):
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource,
            max_resource=pruner.max_resource,
            reduction_factor=pruner.reduction_factor,
        )
    assert isinstance(pruner, NopPrunerSpec)
    return optuna.pruners.NopPruner()


def load_study(
    name: str,
    search: SearchSpec,
    storage: optuna.storages.BaseStorage | str,
    *,
    seed_offset: int = 0,
) -> optuna.Study:
    """The Optuna study ``name`` with the sampler and pruner ``search`` asks for; a
    warm-started study's sampler first follows the earlier studies' ranking for the trials
    that start before the study has a result (``hpo.core.transfer``), and its TPE takes the
    ranking as a prior (``hpo.core.prior_tpe``)."""
    study = optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=build_sampler(search, seed_offset=seed_offset),
        pruner=build_pruner(search.pruner),
    )
    if search.warm_start is not None:
        ranking = records.warm_start_ranking(study.user_attrs)
        if ranking:
            scores = records.warm_start_scores(study.user_attrs, len(ranking))
            ranked = [Ranked(p, s) for p, s in zip(ranking, scores, strict=True)]
            sampler = build_sampler(search, seed_offset=seed_offset, prior=ranked)
            study.sampler = TransferSampler(sampler, ranked, blind_only=True)
    return study
