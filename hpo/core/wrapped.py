"""A sampler that wraps another and changes only some of its calls.

Optuna has no public base for this (its own ``PartialFixedSampler`` forwards each call by
hand): ``WrappedSampler`` forwards the whole ``BaseSampler`` interface to ``base`` once, so a
wrapper (``hpo.core.untried``, ``hpo.core.transfer``) overrides only what it changes and
calls ``super()`` for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState


class WrappedSampler(optuna.samplers.BaseSampler):
    """Every call goes to ``base``."""

    def __init__(self, base: optuna.samplers.BaseSampler) -> None:
        self._base = base

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._base.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._base.after_trial(study, trial, state, values)
