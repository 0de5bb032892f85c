"""Never train a configuration of a finite space twice while untried ones remain.

Optuna's TPE and GP samplers propose a configuration again once they believe it best: on a
grid of a few dozen LoRA configurations that retrains a finished (or running) one at full
cost and learns nothing. ``UntriedSampler`` wraps any sampler and swaps such a repeat for the
untried configuration nearest to it (a sampler's best guess was there, so look next door).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.core import records
from hpo.core.initial import first_value
from hpo.core.wrapped import WrappedSampler

Config = tuple[Any, ...]
# Larger spaces are left alone: a repeat there is rare, and the search for the nearest
# untried configuration walks the whole grid (bounded work per ask).
MAX_CONFIGURATIONS = 10_000


def nearest_untried(
    proposal: Config,
    tried: set[Config],
    choices: Sequence[Sequence[Any]],
    rng: np.random.Generator,
) -> Config | None:
    """``proposal`` if untried, else the untried configuration fewest grid steps from it
    (sum over parameters of the distance between choice indices; ties drawn by ``rng``), or
    None when every configuration was tried."""
    if proposal not in tried:
        return proposal
    index = [list(c).index(v) for c, v in zip(choices, proposal, strict=True)]
    best: list[Config] = []
    best_distance = None
    for point in np.ndindex(*(len(c) for c in choices)):
        config = tuple(c[i] for c, i in zip(choices, point, strict=True))
        if config in tried:
            continue
        distance = sum(abs(i - j) for i, j in zip(point, index, strict=True))
        if best_distance is None or distance < best_distance:
            best, best_distance = [config], distance
        elif distance == best_distance:
            best.append(config)
    if not best:
        return None
    return best[int(rng.integers(len(best)))]


class UntriedSampler(WrappedSampler):
    """``base``, except that a repeat of a complete, running or paused configuration becomes the
    nearest untried one, and with ``prior_first`` trial 0 tries ``hpo.core.initial``'s
    first configuration. Applies where the whole relative space is categorical and has at
    most ``MAX_CONFIGURATIONS`` configurations; elsewhere it is ``base`` unchanged."""

    def __init__(
        self,
        base: optuna.samplers.BaseSampler,
        *,
        seed: int | None = None,
        prior_first: bool = False,
    ) -> None:
        super().__init__(base)
        self._rng = np.random.default_rng(seed)
        self._prior_first = prior_first

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        params = super().sample_relative(study, trial, search_space)
        dists = {n: d for n, d in search_space.items() if isinstance(d, CategoricalDistribution)}
        if not params or params.keys() != search_space.keys() or len(dists) < len(search_space):
            return params
        size = 1
        for d in dists.values():
            size *= len(d.choices)
        if size > MAX_CONFIGURATIONS:
            return params
        names = sorted(dists)
        states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED)
        tried = {
            tuple(t.params.get(n) for n in names)
            for t in study.get_trials(deepcopy=False, states=states)
            # a paused configuration (PRUNED to Optuna) is tried: a scheduler continues it
            if t.number != trial.number
            and (t.state != TrialState.PRUNED or records.paused_at(t) is not None)
        }
        choices = [dists[n].choices for n in names]
        config = nearest_untried(tuple(params[n] for n in names), tried, choices, self._rng)
        return params if config is None else dict(zip(names, config, strict=True))

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if self._prior_first and trial.number == 0:  # unique: no two workers both start here
            return first_value(param_name, param_distribution, trial.params)
        return super().sample_independent(study, trial, param_name, param_distribution)
