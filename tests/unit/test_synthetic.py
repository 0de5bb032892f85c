"""The synthetic curve family: seeded, and its early ranks agree with the end as documented."""

from __future__ import annotations

import pytest

from hpo.core.schedulers.adaptive import spearman
from hpo.core.spec import SearchSpec
from hpo.simulate import simulate
from hpo.synthetic import make_task


@pytest.mark.parametrize(("late", "low", "high"), [(0.0, 0.85, 1.0), (1.0, -1.0, 0.2)])
def test_the_synthetic_family_ranks_early_as_documented(
    late: float, low: float, high: float
) -> None:
    task = make_task(late=late, seed=3)
    assert task.curves == make_task(late=late, seed=3).curves  # seeded
    assert len(task.curves) == 48 and {len(c) for c in task.curves.values()} == {27}
    rho = spearman([c[2] for c in task.curves.values()], [c[-1] for c in task.curves.values()])
    assert rho is not None and low <= rho <= high
    sim = simulate(
        SearchSpec.model_validate({"space": task.search_space, "budget": {"max_trials": 5}}),
        task,
        workers=2,
        seed=0,
    )
    assert len(sim.trials) == 5 and sim.best_curve[-1][1] >= task.best_value
