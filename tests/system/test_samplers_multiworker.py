"""Every sampler with several real worker processes on one study: the budget holds exactly and
no configuration is proposed twice; a grid runs each point exactly once.

Workers run a cheap objective (no training) through the worker's objective-factory seam, so
what is tested is the claim, sampling and telling across processes, not fine-tuning.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from optuna.trial import TrialState

from tests.conftest import ApiServer
from tests.specs import minimal_spec
from tests.workers import trials

pytestmark = pytest.mark.slow
Spawn = Callable[..., subprocess.Popen[bytes]]
WORKERS = 3

CONTINUOUS = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1},
}
GRID = {
    "learning_rate": {"type": "categorical", "choices": [1e-4, 3e-4, 1e-3]},
    "lora_r": {"type": "categorical", "choices": [4, 8]},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "step": 0.05},
}


def _run(api: ApiServer, spawn: Spawn, spec: dict[str, Any]) -> list[dict[str, Any]]:
    with api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
    barrier = ("--barrier", str(WORKERS))
    workers = [
        spawn(api.settings, f"w{i}", "--cheap", *barrier, "--idle-exit", "3", injected=True)
        for i in range(WORKERS)
    ]
    assert [w.wait(timeout=240) for w in workers] == [0] * WORKERS
    done = [t for t in trials(api.settings, spec["name"]) if t.state == TrialState.COMPLETE]
    assert len({t.user_attrs["worker"] for t in done}) == WORKERS
    return [t.params for t in done]


@pytest.mark.parametrize(
    ("sampler", "n"),
    [
        ({"type": "tpe", "seed": 3, "n_startup_trials": 4}, 12),
        ({"type": "random", "seed": 3}, 12),
        ({"type": "cmaes", "seed": 3}, 12),
        ({"type": "gp", "seed": 3, "n_startup_trials": 4}, 10),
        ({"type": "qmc", "seed": 3}, 12),
    ],
    ids=lambda v: v["type"] if isinstance(v, dict) else str(v),
)
def test_no_sampler_proposes_a_configuration_twice(
    pg_api: ApiServer, spawn_worker: Spawn, sampler: dict[str, Any], n: int
) -> None:
    spec = minimal_spec(
        f"s-{sampler['type']}", space=CONTINUOUS, sampler=sampler, budget={"max_trials": n}
    )
    params = _run(pg_api, spawn_worker, spec)
    assert len(params) == n
    keys = [tuple(sorted(p.items())) for p in params]
    assert len(set(keys)) == n, "a configuration was proposed twice"


def test_the_grid_runs_each_point_exactly_once(pg_api: ApiServer, spawn_worker: Spawn) -> None:
    """Seeded per worker, each process once shuffled the grid its own way, so one grid id
    named different points in different workers: a point ran twice and another never."""
    spec = minimal_spec(
        "grid", space=GRID, sampler={"type": "grid", "seed": 11}, budget={"max_trials": 50}
    )
    params = _run(pg_api, spawn_worker, spec)
    points = sorted(tuple(sorted(p.items())) for p in params)
    expected = sorted(
        (("learning_rate", lr), ("lora_r", r), ("weight_decay", wd))
        for lr in (1e-4, 3e-4, 1e-3)
        for r in (4, 8)
        for wd in (0.0, 0.05, 0.1)
    )
    assert points == expected  # all 18 points once; the budget of 50 stops at the grid's size
