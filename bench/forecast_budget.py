"""Does the forecast scheduler keep the best under a time budget? Simulated.

    python -m bench.forecast_budget PATH/TO/nmtlc.pkl [--sets ...] [--runs 40] [--workers 1]
        [--fractions 0.25 0.5] [--rules budget-endgame previous]

Each run is ``tpe + forecast`` (``bench.strategies``' setting) on one task under
``budget.timeout_s`` = fraction x the task's full-grid cost / workers (simulated wall clock):
the study ends mid-search. A run *keeps the best* when no configuration it left paused has a
recorded final value better than the best it completed (what it paused would have won).
``previous``: the rule before issue 35 (blind to what the budget leaves: no endgame before
it is spent). Runs per set: tasks x seeds up to
``--runs`` (NMTLC 10 tasks x 4 seeds, the synthetic sets 5 x 8, SmolLM2 1 x 40). Writes
bench/results/forecast-budget.{md,json}.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from bench import commit, machine, save
from bench.strategies import SETS, Task, first_rung, load_set
from hpo.core.schedulers import Decision
from hpo.core.schedulers.forecast import ForecastScheduler
from hpo.core.schedulers.rungs import Config
from hpo.core.spec import ForecastSchedulerSpec, SearchSpec, grid_size
from hpo.simulate import NotRecorded, simulate


class PreviousForecast(ForecastScheduler):
    """The forecast scheduler as before issue 35: blind to what the budget leaves."""

    def next_work(
        self, configs: Sequence[Config], *, can_start: bool, left: float | None = None
    ) -> Decision:
        return super().next_work(configs, can_start=can_start)


RULES = {"budget-endgame": ForecastScheduler, "previous": PreviousForecast}


def _search(task: Task, timeout: float) -> SearchSpec:
    return SearchSpec.model_validate(
        {
            "space": task.search_space,
            "sampler": {"type": "tpe"},
            "scheduler": {"type": "forecast", "min_steps": first_rung(task)},
            "budget": {"max_trials": 10_000, "timeout_s": timeout},
        }
    )


def _final(task: Task, params: dict[str, Any]) -> float | None:
    try:
        return task.curve(params)[-1][1]
    except NotRecorded:
        return None


def one_run(task: Task, rule: str, *, fraction: float, workers: int, seed: int) -> dict[str, Any]:
    search = _search(task, fraction * task.full_grid_cost / workers)
    spec = search.scheduler
    assert isinstance(spec, ForecastSchedulerSpec)
    scheduler = RULES[rule](spec, size=grid_size(search.space))
    sim = simulate(search, task, workers=workers, seed=seed, scheduler=scheduler)
    done = [t.value for t in sim.trials if t.value is not None]
    best = min(done) if done else None
    paused = [t for t in sim.trials if t.state == "paused"]
    lost = [
        f
        for t in paused
        if (f := _final(task, dict(t.params))) is not None and (best is None or f < best)
    ]
    return {
        "task": task.name,
        "seed": seed,
        "kept": not lost,
        "paused_left": len(paused),
        "would_have_won": len(lost),
        "regret": None if best is None else (best - task.best_value) / task.best_value,
        "spent": sim.total_cost / task.full_grid_cost,
    }


def run_set(
    name: str, data: Path | None, rule: str, *, runs: int, fraction: float, workers: int
) -> dict[str, Any]:
    tasks = load_set(name, data)
    seeds = max(1, runs // len(tasks))
    started = time.perf_counter()
    rows = [
        one_run(task, rule, fraction=fraction, workers=workers, seed=seed)
        for seed in range(seeds)
        for task in tasks
    ][:runs]
    regrets = sorted(r["regret"] for r in rows if r["regret"] is not None)
    return {
        "set": name,
        "rule": rule,
        "fraction": fraction,
        "workers": workers,
        "runs": len(rows),
        "kept": sum(r["kept"] for r in rows),
        "median_regret": regrets[len(regrets) // 2] if regrets else None,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| set | workers | budget (share of the grid) | rule | kept the best | "
        "median regret of the best found | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        regret = "-" if r["median_regret"] is None else f"{r['median_regret']:.4f}"
        lines.append(
            f"| {r['set']} | {r['workers']} | {r['fraction']} | {r['rule']} | "
            f"{r['kept']}/{r['runs']} | {regret} | {r['seconds']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nmtlc", type=Path, nargs="?")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    results = []
    for name in args.sets:
        for workers in args.workers:
            for fraction in args.fractions:
                for rule in args.rules:
                    result = run_set(
                        name,
                        args.nmtlc,
                        rule,
                        runs=args.runs,
                        fraction=fraction,
                        workers=workers,
                    )
                    print(table([result]).splitlines()[-1], flush=True)
                    results.append(result)
    header = (
        f"# forecast under a time budget\n\ncommit {commit()}, {machine()}\n\n"
        "A run keeps the best when nothing it left paused would have beaten the best it "
        "completed (recorded finals).\n\n"
    )
    save("forecast-budget", results, header + table(results) + "\n")


if __name__ == "__main__":
    main()
