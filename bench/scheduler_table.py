"""The simulator's strategy table for fixed seeds: every scheduler on two task sets, W=1 and 8.

    python -m bench.scheduler_table PATH/TO/nmtlc.pkl OUT.md [--seeds 0 1] [--tasks 2]

Deterministic (one process, fixed seeds, modelled costs): run it before and after a change
that must not change behaviour, and diff the two files. Each row digests every simulated
configuration of every task (params, state, value, cost, clock, segments) and the
best-so-far curve, so any change in what the scheduler decided shows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import optuna

from bench.strategies import MAX_COST, STRATEGIES, _search, load_set
from hpo.core.errors import SpecError
from hpo.core.spec import SearchSpec
from hpo.simulate import Simulation, simulate

SETS = ("nmtlc", "synthetic-ranked")
# every scheduler that the simulator replays (PBT: the row says why it refuses)
NAMES = (
    "tpe",
    "tpe + asha, promotion",
    "tpe + top-k",
    "tpe + adaptive",
    "random + asha, promotion",
)


def _digest(sim: Simulation) -> str:
    trials = [
        (
            t.number,
            t.worker,
            sorted(t.params.items()),
            t.state,
            t.value,
            t.cost,
            t.start,
            t.end,
            [
                (s.trial, s.worker, s.first_step, s.last_step, s.cost, s.start, s.end)
                for s in t.segments
            ],
        )
        for t in sim.trials
    ]
    blob = json.dumps([trials, sim.best_curve, sim.total_cost, sim.stalled_workers])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _row(
    data: Path, task_set: str, name: str, workers: int, seed: int, tasks: int
) -> dict[str, Any]:
    digests, configs, segments, cost = [], 0, 0, 0.0
    for task in load_set(task_set, data)[:tasks]:
        sim = simulate(
            _search(task, STRATEGIES[name]),
            task,
            workers=workers,
            seed=seed,
            max_cost=MAX_COST * task.full_grid_cost,
        )
        digests.append(_digest(sim))
        configs += len(sim.trials)
        segments += sum(len(t.segments) for t in sim.trials)
        cost += sim.total_cost
    digest = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
    return {
        "set": task_set,
        "strategy": name,
        "workers": workers,
        "seed": seed,
        "configurations": configs,
        "segments": segments,
        "cost": round(cost, 6),
        "digest": digest,
    }


def _pbt_refusal() -> str:
    search = SearchSpec.model_validate(
        {
            "space": {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}},
            "scheduler": {"type": "pbt", "interval_steps": 2},
        }
    )
    try:
        simulate(search, None, workers=1, seed=0)  # type: ignore[arg-type]
    except SpecError as exc:
        return str(exc)
    return "replayed"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("data", type=Path, help="NMTLC's nmtlc.pkl")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--tasks", type=int, default=2, help="the first N tasks of each set")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    lines = [
        "| set | strategy | W | seed | configurations | segments | cost | digest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task_set in SETS:
        for name in NAMES:
            if task_set not in STRATEGIES[name].sets:
                continue
            for workers in (1, 8):
                for seed in args.seeds:
                    r = _row(args.data, task_set, name, workers, seed, args.tasks)
                    lines.append("| " + " | ".join(str(v) for v in r.values()) + " |")
                    print(lines[-1], flush=True)
    lines.append(f"\npbt: {_pbt_refusal()}\n")
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
