"""Gaussian-process BO while it sees everything the study knows, TPE from then on.

Optuna's ``GPSampler`` reads only complete and running trials: it cannot learn from a trial
a pruner stopped, a scheduler paused, or the record that a configuration ran out of memory
(``worker/outcomes.py`` tells samplers so with a PRUNED copy carrying a violated constraint;
TPE reads it). Its fit also grows with the cube of the trials it has. ``GPOrTPE`` asks GP
until the study has its first PRUNED trial or more than ``MAX_GP_TRIALS`` complete ones, and
TPE (which reads them all) for every trial after that.

Workers asking at the same moment see the same history, and GP's acquisition search starts
from the best trial, so it converges to the same point in every one of them: the same
configuration trained twice. GP conditions on running trials once their parameters are
written, so a trial asked while another worker's new trial has none yet goes to TPE, whose
constant liar and per-worker seed keep concurrent proposals apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.core.wrapped import WrappedSampler

# A GP ask takes a few seconds at 200 complete trials on one CPU core (2-core host, loaded);
# TPE's stays flat.
MAX_GP_TRIALS = 200


def gp_sees_everything(
    trials: Sequence[FrozenTrial], *, max_gp_trials: int, number: int | None = None
) -> bool:
    """Whether GP would see all the study knows when trial ``number`` asks: no PRUNED
    trial, at most ``max_gp_trials`` complete ones, and no other RUNNING trial still
    without the parameters every complete trial has (being sampled right now)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    names = set().union(*(t.params for t in complete))
    for t in trials:
        if t.state == TrialState.PRUNED:
            return False
        sampling = t.state == TrialState.RUNNING and t.number != number
        if sampling and (not t.params or not names <= t.params.keys()):
            return False
    return len(complete) <= max_gp_trials


class GPOrTPE(WrappedSampler):
    """``gp`` (the wrapped sampler) for a trial while ``gp_sees_everything``, else ``tpe``;
    chosen once per trial, when it starts."""

    def __init__(
        self,
        gp: optuna.samplers.BaseSampler,
        tpe: optuna.samplers.BaseSampler,
        *,
        max_gp_trials: int = MAX_GP_TRIALS,
    ) -> None:
        super().__init__(gp)
        self._tpe = tpe
        self._max_gp_trials = max_gp_trials
        self._by_trial: dict[int, optuna.samplers.BaseSampler] = {}

    def _for(self, study: optuna.Study, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        chosen = self._by_trial.get(trial.number)
        if chosen is None:
            states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            trials = study.get_trials(deepcopy=False, states=states)
            gp = gp_sees_everything(trials, max_gp_trials=self._max_gp_trials, number=trial.number)
            chosen = self._base if gp else self._tpe
            self._by_trial[trial.number] = chosen
        return chosen

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        super().before_trial(study, trial)
        self._tpe.before_trial(study, trial)
        self._for(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._for(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        sampler = self._for(study, trial)
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._by_trial.pop(trial.number, None)
        super().after_trial(study, trial, state, values)
        self._tpe.after_trial(study, trial, state, values)
