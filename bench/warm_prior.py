"""A benchmark candidate: TPE with the earlier studies' results as a prior it outgrows.

``PriorTPE`` shows a TPE sampler, besides the study's own finished trials, every
configuration the sources tried as an earlier result valued at its consensus score
(``hpo.core.warm_start.consensus_ranking``: 0 the sources' best, 1 their worst); the study's
own completed trials are valued on the same scale by their rank among themselves, so each
pseudo-trial weighs as much as one of the study's own, and their share shrinks as the study's
own results grow (a configuration the study tried, failed ones included, leaves the prior).
From ``horizon`` completed trials on it is the plain TPE (the prior is dropped). Unlike
enqueuing the sources' best, it makes the very first proposals model-based where a cold TPE
starts at random.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from hpo.core.factory import to_optuna_distribution
from hpo.core.transfer import TransferSampler
from hpo.core.untried import UntriedSampler
from hpo.core.warm_start import Ranked, consensus_ranking

HORIZON = 10


class PriorTPE(optuna.samplers.BaseSampler):
    """``tpe``, fitted to the sources' ranking plus the study's own results until ``horizon``."""

    def __init__(
        self,
        tpe: optuna.samplers.TPESampler,
        prior: Sequence[Ranked],
        space: dict[str, BaseDistribution],
        *,
        horizon: int = HORIZON,
    ) -> None:
        self._tpe = tpe
        self._prior = [r for r in prior if r.params.keys() == space.keys()]
        self._space = space
        self._horizon = horizon

    def _own(self, study: optuna.Study) -> list[FrozenTrial]:
        return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def _outgrown(self, study: optuna.Study) -> bool:
        return not self._prior or len(self._own(study)) >= self._horizon

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if self._outgrown(study):
            return self._tpe.infer_relative_search_space(study, trial)
        return dict(self._space)  # the whole space from the first trial: the prior covers it

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self._outgrown(study):
            return self._tpe.sample_relative(study, trial, search_space)
        # the view's own sampler only starts the probe trial below: random, no fit
        view = optuna.create_study(
            direction=study.direction, sampler=optuna.samplers.RandomSampler(seed=0)
        )
        minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
        scored = [
            (t.value if minimize else -t.value, t) for t in self._own(study) if t.value is not None
        ]
        own = [t for _, t in sorted(scored, key=lambda vt: vt[0])]
        ranks = [i / max(len(own) - 1, 1) for i in range(len(own))]
        # a configuration the study tried (failed ones too) speaks for itself, not by prior
        tried = {_key(t.params) for t in study.get_trials(deepcopy=False) if t.params}
        prior = [r for r in self._prior if _key(r.params) not in tried]
        values = [r.score for r in prior] + ranks
        params = [r.params for r in prior] + [t.params for t in own]
        sign = 1.0 if minimize else -1.0
        view.add_trials(
            create_trial(params=p, distributions=self._space, value=sign * v)
            for p, v in zip(params, values, strict=True)
        )
        running = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number != trial.number and t.params.keys() == self._space.keys()
        ]
        view.add_trials(
            create_trial(state=TrialState.RUNNING, params=t.params, distributions=self._space)
            for t in running
        )
        probe = view.ask()  # a trial of the view: TPE's bookkeeping (liar params) stays there
        frozen = view._storage.get_trial(probe._trial_id)  # noqa: SLF001
        return self._tpe.sample_relative(view, frozen, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._tpe.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._tpe.after_trial(study, trial, state, values)


def _key(params: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def prior_sampler(sources: Sequence[Any], task: Any, seed: int, *, horizon: int = HORIZON) -> Any:
    """The service's stack (first batch from the ranking, no repeats, LoRA prior first) with
    ``PriorTPE`` in place of its TPE, as ``simulate``'s ``sampler`` hook per worker."""
    space = {n: to_optuna_distribution(d) for n, d in task.search_space.items()}
    ranking = consensus_ranking(list(sources), task.search_space)

    def build(_: optuna.samplers.BaseSampler, worker: int) -> optuna.samplers.BaseSampler:
        own = (seed + worker) % 2**32  # as build_sampler offsets each worker's seed
        tpe = optuna.samplers.TPESampler(
            seed=own, n_startup_trials=4, multivariate=True, constant_liar=True
        )
        prior = PriorTPE(tpe, ranking, space, horizon=horizon)
        return TransferSampler(
            UntriedSampler(prior, seed=own, prior_first=True), ranking, blind_only=True
        )

    return build
