"""Warm start, leave one task out: cold start vs a start from the other tasks' results.

    python -m bench.warm_start PATH/TO/nmtlc.pkl [--seeds 3] [--workers 1 8] [--top-k 3]
        [--sets nmtlc synthetic-family]

For each seed, every task of a set first runs cold (the service's default search, as in
``bench.strategies``); then each task runs again, warm-started (``hpo.core.warm_start``) from
the finished trials of the *other* tasks' cold runs of the same seed, nearest tasks first (in
NMTLC's order: same language pair, then family; in the synthetic family: the nearest share of
late blooming, whose best learning rate lies nearest). Cost to get within 0.1% (and 1%) of the
task's best final loss, as a share of its full-grid cost, warm beside cold and beside the best
peer's cold start (Syne Tune GP BO, ``bench/results/peers.json``); per task, how often warm
cost more than cold (where transfer hurts). ``synthetic-family`` is one task per share of late
blooming 0, 0.25, .., 1 (seed 0): related tasks whose best configuration moves.
Writes ``bench/results/warm-start.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import time
from pathlib import Path
from statistics import median
from typing import Any

import optuna

from bench.strategies import (
    DEFAULT,
    MAX_COST,
    STRATEGIES,
    TARGETS,
    _fmt,
    _search,
    cost_to_targets,
    target_stats,
)
from hpo.core.warm_start import SourceStudy, warm_start_configs
from hpo.nmtlc import load_tasks
from hpo.simulate import Simulation, simulate
from hpo.synthetic import make_task

RESULTS = Path(__file__).parent / "results"
SETS = ("nmtlc", "synthetic-family")
FAMILY_LATE = (0.0, 0.25, 0.5, 0.75, 1.0)
PEER = "st gp bo"
PEER_SET = {"nmtlc": "nmtlc", "synthetic-family": "synthetic-mixed"}


def load_set(name: str, data: Path) -> list[Any]:
    if name == "nmtlc":
        return list(load_tasks(data))
    return [make_task(late=late, seed=0) for late in FAMILY_LATE]


def nearest_first(i: int, n: int) -> list[int]:
    """The other tasks' indices by distance in the set's order, the earlier first on a tie."""
    return sorted((j for j in range(n) if j != i), key=lambda j: (abs(j - i), j))


def _source(name: str, sim: Simulation) -> SourceStudy:
    done = [(t.params, t.value) for t in sim.trials if t.state == "complete"]
    return SourceStudy(name, True, [(p, v) for p, v in done if v is not None])


def _outcome(task: Any, sim: Simulation) -> dict[str, float]:
    return cost_to_targets(sim.best_curve, task.best_value, task.full_grid_cost)


def run_set(task_set: str, data: Path, *, workers: int, seed: int, top_k: int) -> list[dict]:
    tasks = load_set(task_set, data)
    strategy = STRATEGIES[DEFAULT]
    cold = []
    for task in tasks:
        sim = simulate(
            _search(task, strategy),
            task,
            workers=workers,
            seed=seed,
            max_cost=MAX_COST * task.full_grid_cost,
        )
        cold.append(sim)
    rows = []
    for i, task in enumerate(tasks):
        sources = [_source(tasks[j].name, cold[j]) for j in nearest_first(i, len(tasks))]
        warm = warm_start_configs(sources, task.search_space, top_k=top_k)
        sim = simulate(
            _search(task, strategy),
            task,
            workers=workers,
            seed=seed,
            max_cost=MAX_COST * task.full_grid_cost,
            warm=warm,
        )
        names = ("learning_rate", "per_device_train_batch_size", "lora_r")
        keys = [tuple(c.params.get(k) for k in names) for c in warm]
        finals = [task.curves[key][-1] for key in keys if key in task.curves]  # recorded ones
        rows.append(
            {
                "set": task_set,
                "workers": workers,
                "seed": seed,
                "task": task.name,
                "cold": _outcome(task, cold[i]),
                "warm": _outcome(task, sim),
                # how near the task's best the best warm configuration alone is
                "warm_first_regret": (
                    (min(finals) - task.best_value) / task.best_value if finals else None
                ),
            }
        )
    return rows


def summarise(rows: list[dict], peers: list[dict]) -> list[dict]:
    out = []
    for task_set, workers in sorted({(r["set"], r["workers"]) for r in rows}):
        mine = [r for r in rows if (r["set"], r["workers"]) == (task_set, workers)]
        row: dict[str, Any] = {"set": task_set, "workers": workers, "runs": len(mine)}
        for side in ("cold", "warm"):
            row[side] = {str(t): target_stats([r[side][str(t)] for r in mine]) for t in TARGETS}
        key = str(TARGETS[-1])
        ratios = [
            r["warm"][key] / r["cold"][key]
            for r in mine
            if math.isfinite(r["cold"][key]) and math.isfinite(r["warm"][key])
        ]
        row["median_warm_over_cold"] = median(ratios) if ratios else None
        row["runs_at_most_a_third"] = sum(x <= 1 / 3 for x in ratios)
        row["runs_where_warm_cost_more"] = sum(r["warm"][key] > r["cold"][key] for r in mine)
        hurt: dict[str, int] = {}
        for r in mine:
            if r["warm"][key] > r["cold"][key]:
                hurt[r["task"]] = hurt.get(r["task"], 0) + 1
        row["hurt_tasks"] = hurt
        peer = [
            p
            for p in peers
            if p["strategy"] == PEER and p["set"] == PEER_SET[task_set] and p["workers"] == workers
        ]
        row["peer"] = (
            {"set": PEER_SET[task_set], **peer[0]["cost_to_target"][key]} if peer else None
        )
        out.append(row)
    return out


def _cell(stats: dict[str, Any]) -> str:
    return f"{_fmt(stats['median'])} ({stats['reached']:.0%})"


def markdown(summary: list[dict], meta: dict[str, Any]) -> str:
    key = str(TARGETS[-1])
    lines = [
        "# Warm start, leave one task out",
        "",
        f"Commit {meta['commit']}, {meta['machine']}, {meta['seeds']} seeds, top_k "
        f"{meta['top_k']}, {meta['seconds']:.0f} s. Produced by `python -m bench.warm_start`.",
        "",
        "Each task searched with the default (TPE, no scheduler), cold, and warm-started from "
        "the other tasks' cold runs of the same seed (their best configurations, nearest "
        "tasks first, interleaved; `hpo.core.warm_start`). Cost to get within 0.1% of the "
        "task's best final loss as a share of its full-grid cost, median over tasks x seeds "
        "(reach rate); the best peer's cold start (Syne Tune GP BO, `peers.json`; for the "
        "synthetic family its `synthetic-mixed` row) beside it. The target: warm <= 1/3 of "
        "cold.",
        "",
        "| set | W | cold: cost to 0.1% (reach) | warm | peer, cold | median warm/cold "
        "| runs warm <= 1/3 cold | runs warm cost more |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        peer = row["peer"]
        peer_cell = f"{_fmt(peer['median'])} ({peer['reached']:.0%})" if peer else "-"
        ratio = row["median_warm_over_cold"]
        lines.append(
            f"| {row['set']} | {row['workers']} | {_cell(row['cold'][key])} | "
            f"{_cell(row['warm'][key])} | {peer_cell} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | {row['runs_at_most_a_third']}/"
            f"{row['runs']} | {row['runs_where_warm_cost_more']}/{row['runs']} |"
        )
    lines += ["", "Where warm cost more than cold (task: runs):", ""]
    for row in summary:
        hurt = ", ".join(f"{t}: {n}" for t, n in sorted(row["hurt_tasks"].items())) or "none"
        lines.append(f"- {row['set']}, W={row['workers']}: {hurt}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="NMTLC's nmtlc.pkl")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--out", default="warm-start", help="results file stem")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    began = time.monotonic()
    rows = []
    for workers in args.workers:
        for task_set in args.sets:
            for seed in range(args.seeds):
                rows += run_set(task_set, args.data, workers=workers, seed=seed, top_k=args.top_k)
                print(
                    f"{task_set} W={workers} seed {seed}: {time.monotonic() - began:.0f} s",
                    flush=True,
                )
    peers = json.loads((RESULTS / "peers.json").read_text())["rows"]
    summary = summarise(rows, peers)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    meta = {
        "commit": commit,
        "machine": f"{platform.machine()}, {platform.processor()}",
        "seeds": args.seeds,
        "top_k": args.top_k,
        "seconds": time.monotonic() - began,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=1)
    )
    (RESULTS / f"{args.out}.md").write_text(markdown(summary, meta))
    print(markdown(summary, meta))


if __name__ == "__main__":
    main()
