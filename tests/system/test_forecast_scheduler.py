"""The forecast scheduler on real worker processes and PostgreSQL: once every configuration
of a finite space started, paused ones continue by forecast, and the space's best ends it."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Callable

import pytest
from optuna.trial import TrialState

from hpo.core.records import CONTINUES_ATTR, PAUSED_AT_ATTR
from hpo.core.schedulers.rungs import configurations
from tests.conftest import ApiServer
from tests.specs import minimal_spec
from tests.workers import race_workers, trials

Spawn = Callable[..., subprocess.Popen[bytes]]
LEARNING_RATES = [1e-4, 3e-4, 1e-3, 3e-3]
WARMUPS = [0.0, 0.05, 0.1]
MAX_TRIALS = 30  # more than the space has: the space, not the budget, runs out


def _cheap_value(lr: float, warmup: float) -> float:
    """``tests.worker_process.cheap_objective`` on this space: a bowl over choice indices."""
    return sum(
        (choices.index(v) / (len(choices) - 1) - 0.37) ** 2
        for choices, v in ((LEARNING_RATES, lr), (WARMUPS, warmup))
    )


@pytest.mark.slow
def test_worker_processes_keep_the_best_of_a_finite_space(
    pg_api: ApiServer, spawn_worker: Spawn
) -> None:
    """Three worker processes on a 12-point space: configurations pause at the trusted rung,
    none starts once all 12 did, no paused one continues twice, and the study ends
    completed with the space's best configuration trained to its end as its best trial."""
    spec = minimal_spec(
        "forecast",
        space={
            "learning_rate": {"type": "categorical", "choices": LEARNING_RATES},
            "warmup_ratio": {"type": "categorical", "choices": WARMUPS},
        },
        sampler={"type": "tpe", "seed": 3},
        scheduler={"type": "forecast", "min_steps": 1, "min_pairs": 4, "audit_every": 100},
        budget={"max_trials": MAX_TRIALS},
    )
    study = race_workers(pg_api, spawn_worker, spec)
    done = trials(pg_api.settings, "forecast")
    assert {t.state for t in done} <= {TrialState.COMPLETE, TrialState.PRUNED}
    configs = configurations(done)
    space = set(itertools.product(LEARNING_RATES, WARMUPS))
    assert {(c.params["learning_rate"], c.params["warmup_ratio"]) for c in configs} == space
    assert len(configs) < MAX_TRIALS  # it stopped starting once the space ran out
    assert any(t.user_attrs.get(PAUSED_AT_ATTR) is not None for t in done)
    continued = [t.user_attrs[CONTINUES_ATTR] for t in done if CONTINUES_ATTR in t.user_attrs]
    assert continued and len(continued) == len(set(continued))
    assert study["status"] == "completed", study["status_reason"]
    best = min(space, key=lambda p: _cheap_value(*p))
    best_trial = done[study["best_trial"]]
    assert best_trial.state == TrialState.COMPLETE
    assert (best_trial.params["learning_rate"], best_trial.params["warmup_ratio"]) == best
