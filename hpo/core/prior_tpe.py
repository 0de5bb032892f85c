"""TPE with earlier studies' results as a prior it outgrows.

``PriorTPE`` shows a TPE sampler, besides the study's own completed trials, every
configuration of a warm start's ranking as an earlier result valued at its consensus score
(``hpo.core.warm_start.consensus_ranking``: 0 the sources' best, 1 their worst); the study's
own completed trials are valued on the same scale by their rank among themselves, so each
pseudo-trial weighs as much as one of the study's own, and their share shrinks as the study's
own results grow (a configuration the study tried, failed ones included, leaves the prior).
From ``horizon`` completed trials on it is the plain TPE (the prior is dropped). Unlike
enqueuing the sources' best, it makes the very first proposals model-based where a cold TPE
starts at random (``bench/results/warm-start.md`` measures it).

Bounded: the prior is at most the stored ranking (``RANKING_LIMIT`` configurations), and the
in-memory view TPE is fitted to is built per proposal only until the horizon.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from hpo.core.warm_start import Ranked, config_key
from hpo.core.wrapped import WrappedSampler

# Own completed trials after which the prior is dropped: by then they outnumber the few
# sources' best that the prior ranks first. Chosen before measuring, not fitted to a table.
HORIZON = 10


class PriorTPE(WrappedSampler):
    """``tpe``, fitted to the ranking plus the study's own results until ``horizon``."""

    def __init__(
        self,
        tpe: optuna.samplers.TPESampler,
        prior: Sequence[Ranked],
        space: Mapping[str, BaseDistribution],
        *,
        horizon: int = HORIZON,
    ) -> None:
        super().__init__(tpe)
        self._space = dict(space)
        self._prior = [r for r in prior if _fits(r.params, self._space)]
        self._horizon = horizon

    def _own(self, study: optuna.Study) -> list[FrozenTrial]:
        return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def _outgrown(self, study: optuna.Study) -> bool:
        return not self._prior or len(self._own(study)) >= self._horizon

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if self._outgrown(study):
            return super().infer_relative_search_space(study, trial)
        return dict(self._space)  # the whole space from the first trial: the prior covers it

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self._outgrown(study):
            return super().sample_relative(study, trial, search_space)
        view = self.view(study, trial)
        probe = view.ask()  # a trial of the view: TPE's bookkeeping (liar params) stays there
        frozen = view._storage.get_trial(probe._trial_id)  # noqa: SLF001 - the probe's FrozenTrial
        return super().sample_relative(view, frozen, search_space)

    def view(self, study: optuna.Study, trial: FrozenTrial) -> optuna.Study:
        """An in-memory study holding the prior, the study's own results on the prior's scale
        and its running trials (TPE's constant liar sees them there as in the study)."""
        # the view's own sampler only starts the probe trial: random, no fit
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
        tried = {config_key(t.params) for t in study.get_trials(deepcopy=False) if t.params}
        prior = [r for r in self._prior if config_key(r.params) not in tried]
        values = [r.score for r in prior] + ranks
        params = [r.params for r in prior] + [t.params for t in own]
        sign = 1.0 if minimize else -1.0
        view.add_trials(
            create_trial(params=p, distributions=self._space, value=sign * v)
            for p, v in zip(params, values, strict=True)
            if p.keys() == self._space.keys()
        )
        view.add_trials(
            create_trial(state=TrialState.RUNNING, params=t.params, distributions=self._space)
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number != trial.number and t.params.keys() == self._space.keys()
        )
        return view


def _fits(params: Mapping[str, Any], space: Mapping[str, BaseDistribution]) -> bool:
    """Whether ``params`` is one configuration of ``space``: every name, every value inside."""
    if params.keys() != space.keys():
        return False
    try:
        return all(d._contains(d.to_internal_repr(params[n])) for n, d in space.items())  # noqa: SLF001 - Optuna's range check
    except (ValueError, TypeError):
        return False
