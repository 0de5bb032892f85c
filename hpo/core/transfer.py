"""A sampler that follows earlier studies' ranking of configurations.

``TransferSampler`` wraps the study's own sampler: a new trial takes the ranking's best
configuration not yet tried (``hpo.core.warm_start.next_transfer``) while that says so, then
every trial is the wrapped sampler's (the cold default). Enqueued trials are left alone.
A warm-started study uses it with ``blind_only`` (``hpo.core.factory.load_study``): only the
trials that start before the study has any result follow the ranking. Following it further,
while the guard measures agreement, is a benchmark candidate that did not generalise
(``bench/results/warm-start.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.core.warm_start import MIN_PAIRS, TRUST_THRESHOLD, Ranked, next_transfer
from hpo.core.wrapped import WrappedSampler


class TransferSampler(WrappedSampler):
    """``base``, except that a trial is the ranking's next configuration while trusted."""

    def __init__(
        self,
        base: optuna.samplers.BaseSampler,
        ranking: Sequence[Ranked],
        *,
        min_pairs: int = MIN_PAIRS,
        threshold: float = TRUST_THRESHOLD,
        blind_only: bool = False,
    ) -> None:
        super().__init__(base)
        self._ranking = list(ranking)
        self._min_pairs, self._threshold = min_pairs, threshold
        self._blind_only = blind_only
        self._chosen: dict[int, dict[str, Any]] = {}  # trial number -> its configuration

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        super().before_trial(study, trial)
        if "fixed_params" in trial.system_attrs:  # enqueued: runs as it was queued
            return
        trials = study.get_trials(deepcopy=False)
        done = [
            (t.params, t.value)
            for t in trials
            if t.state == TrialState.COMPLETE and t.value is not None
        ]
        # an enqueued trial's params exist before it runs (a worker may not have set them yet)
        tried = [
            t.params or t.system_attrs.get("fixed_params", {})
            for t in trials
            if t.number != trial.number
        ]
        # earlier trials started by other workers that have no params yet: each takes the
        # ranking's next, so this one passes over as many (distinct by trial number)
        pending = sum(
            1
            for t in trials
            if t.number < trial.number
            and t.state == TrialState.RUNNING
            and not t.params
            and "fixed_params" not in t.system_attrs
        )
        chosen = next_transfer(
            self._ranking,
            done,
            tried,
            minimize=study.direction == optuna.study.StudyDirection.MINIMIZE,
            min_pairs=self._min_pairs,
            threshold=self._threshold,
            blind_only=self._blind_only,
            skip=pending,
        )
        if chosen is not None:
            self._chosen[trial.number] = chosen

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        chosen = self._chosen.get(trial.number)
        if chosen is None:
            return super().sample_relative(study, trial, search_space)
        return {n: chosen[n] for n in search_space if n in chosen}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        chosen = self._chosen.get(trial.number)
        if chosen is not None and param_name in chosen:
            return chosen[param_name]
        return super().sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._chosen.pop(trial.number, None)
        super().after_trial(study, trial, state, values)
