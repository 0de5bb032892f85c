"""bench.peers: the curve export the peers' runner reads, and traces scored as bench.strategies
scores the simulator's runs."""

from __future__ import annotations

import json
import math
from itertools import accumulate

from bench.peers import ExportedTask, _fewer_seeds, best_curve, caps_text, export_task
from bench.strategies import DEFAULT, STRATEGIES, _search, cost_to_targets
from hpo.simulate import simulate
from hpo.synthetic import make_task


def test_an_exported_task_reads_back_as_the_same_objective() -> None:
    task = make_task(late=0.5, seed=1)
    back = ExportedTask(json.loads(json.dumps(export_task(task))))
    assert back.curves == task.curves
    assert back.search_space == task.search_space
    assert (back.best_value, back.full_grid_cost) == (task.best_value, task.full_grid_cost)
    params = dict(
        zip(
            ("learning_rate", "per_device_train_batch_size", "lora_r"),
            next(iter(task.curves)),
            strict=True,
        )
    )
    assert back.curve(params) == task.curve(params)
    search = _search(task, STRATEGIES[DEFAULT])
    search = search.model_copy(
        update={"budget": search.budget.model_copy(update={"max_trials": 6})}
    )
    ours, theirs = (simulate(search, t, workers=2, seed=0).best_curve for t in (task, back))
    assert ours == theirs


def test_a_trace_scores_as_the_simulators_run() -> None:
    task = make_task(late=0.0, seed=2)
    grid = task.full_grid_cost
    sim = simulate(_search(task, STRATEGIES[DEFAULT]), task, workers=1, seed=0, max_cost=grid)
    # One worker: a trial ends when everything before it and itself were paid for.
    costs = accumulate(t.cost for t in sim.trials)
    trace = [[c, t.value, t.state == "complete"] for c, t in zip(costs, sim.trials, strict=True)]
    assert best_curve(trace, completed_only=True) == sim.best_curve
    expected = {str(t): sim.cost_to_reach(task.best_value * (1 + t)) / grid for t in (0.01, 0.001)}
    assert (
        cost_to_targets(best_curve(trace, completed_only=True), task.best_value, grid) == expected
    )


def test_a_stopped_trial_counts_with_its_last_point_unless_completed_only() -> None:
    best, grid = 1.0, 100.0
    trace = [[10.0, 1.05, True], [20.0, 1.0005, False], [40.0, 1.009, True], [50.0, 1.2, True]]
    anything = cost_to_targets(best_curve(trace, completed_only=False), best, grid)
    completed = cost_to_targets(best_curve(trace, completed_only=True), best, grid)
    assert anything == {"0.01": 0.2, "0.001": 0.2}
    assert completed["0.01"] == 0.4 and math.isinf(completed["0.001"])


def test_a_peer_row_with_fewer_seeds_than_its_set_says_so() -> None:
    meta = {"seeds": 2, "set_seeds": {"smollm2": 10}}
    row = {"set": "nmtlc", "strategy": "st dyhpo", "seeds": 1}
    assert _fewer_seeds(row, meta) == "1 of 2 seeds"
    assert _fewer_seeds({**row, "seeds": 2}, meta) == ""
    assert _fewer_seeds({**row, "set": "smollm2", "seeds": 5}, meta) == "5 of 10 seeds"
    # ours, and rows carried over from before seeds were recorded, get no note
    assert _fewer_seeds({**row, "strategy": "ours: tpe (default)"}, meta) == ""
    assert _fewer_seeds({"set": "nmtlc", "strategy": "st gp bo"}, meta) == ""


def test_runs_under_another_cap_are_named_beside_the_cap() -> None:
    assert caps_text({"cap": 150.0, "caps": {"150": 500}}) == "150 s"
    assert caps_text({"cap": 150.0}) == "150 s"  # a peers.json from before caps were recorded
    mixed = caps_text({"cap": 150.0, "caps": {"150": 500, "300": 77}})
    assert mixed == "150 s (300 s for 77 runs)"
