"""Compare search strategies and pause-and-continue schedulers on learning curves, simulated.

    python -m bench.strategies PATH/TO/nmtlc.pkl [--seeds 20] [--workers 1 8] [--jobs 2]
        [--sets nmtlc synthetic-ranked synthetic-mixed synthetic-crossing smollm2]
    python -m bench.strategies --tables-only   # strategies.md from the saved JSON + peers.json

Task sets: NMTLC's recorded LoRA fine-tunes (10 tasks of 27 configurations), and three sets
of the synthetic family in ``hpo/synthetic.py`` (5 seeded tasks of 48 configurations each)
whose early ranks agree with the final ones (``ranked``), partly (``mixed``) or not at all
(``crossing``: late bloomers), and ``smollm2``: a real SmolLM2-135M LoRA grid recorded on CPU
and shipped in the repository (``hpo/smollm2.py``; no path needed). Writes
bench/results/strategies.{md,json} and one plot per set and worker count, each set's table
with the peer libraries' rows of bench/results/peers.json (``bench.peers``) under ours and the
goal table of ``bench.goal`` on top. Costs are modelled
device-seconds normalised by the task's full-grid cost (every configuration trained to its end
once), so tasks of different sizes compare.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any, Protocol

import numpy as np
import optuna
import torch

from bench import RESULTS, commit, goal, machine, save
from hpo import smollm2
from hpo.core.schedulers.adaptive import spearman
from hpo.core.spec import SearchSpace, SearchSpec
from hpo.nmtlc import load_tasks
from hpo.simulate import CurvePoint, Simulation, simulate
from hpo.synthetic import make_task

TARGETS = (0.01, 0.001)  # within 1% and 0.1% of the task's best final loss
MAX_COST = 1.5  # stop a run after 1.5 full-grid costs
BUDGET_POINTS = (0.1, 0.25, 0.5, 1.0)
LATE = {"synthetic-ranked": 0.0, "synthetic-mixed": 0.5, "synthetic-crossing": 1.0}
SETS = ("nmtlc", *LATE, "smollm2")
SYNTHETIC_TASKS = 5
RUNS = RESULTS / "strategies-runs.json"  # every run's best-so-far curves: what the plots draw
DEFAULT = "tpe"  # the service's default search (README "Search defaults")
# What README "Search defaults" recommends, and why it is not the code's default: the goal's row.
RECOMMENDED = "tpe + forecast"
SCHEDULED = (
    "tpe + asha, promotion",
    "tpe + top-k",
    "tpe + adaptive",
    "tpe + forecast",
    "random + asha, promotion",
)


class Task(Protocol):
    name: str
    curves: dict[Any, list[float]]

    @property
    def search_space(self) -> SearchSpace: ...

    @property
    def best_value(self) -> float: ...

    @property
    def full_grid_cost(self) -> float: ...

    def curve(self, params: dict[str, Any]) -> list[CurvePoint]: ...


@dataclass(frozen=True)
class Strategy:
    sampler: dict[str, Any]
    pruner: dict[str, Any] | None = None
    scheduler: str | None = None  # built per task from its training length: see _scheduler
    workers: tuple[int, ...] | None = None  # only these worker counts
    sets: tuple[str, ...] = SETS

    def runs_with(self, workers: int) -> bool:
        return self.workers is None or workers in self.workers


HF_TPE = {"type": "tpe", "n_startup_trials": 10, "multivariate": False, "constant_liar": False}
TPE, RANDOM = {"type": "tpe"}, {"type": "random"}
STRATEGIES = {
    "random": Strategy(RANDOM),
    "hf_default (TPE, 1 worker)": Strategy(HF_TPE, workers=(1,), sets=("nmtlc",)),
    DEFAULT: Strategy(TPE),
    "tpe, no constant_liar": Strategy({**HF_TPE, "multivariate": True}, sets=("nmtlc",)),
    "tpe + median": Strategy(TPE, {"type": "median"}, sets=("nmtlc",)),
    "tpe + median, warmup 20": Strategy(
        TPE, {"type": "median", "n_warmup_steps": 20}, sets=("nmtlc",)
    ),
    "tpe + asha": Strategy(TPE, {"type": "successive_halving"}),
    "tpe + hyperband": Strategy(TPE, {"type": "hyperband"}, sets=("nmtlc",)),
    "random + asha": Strategy(RANDOM, {"type": "successive_halving"}, sets=("nmtlc",)),
    # ~50x slower to simulate than TPE (a GP fit per ask): one worker count, NMTLC only.
    "gp": Strategy({"type": "gp"}, workers=(1,), sets=("nmtlc",)),
    "tpe + asha, promotion": Strategy(TPE, scheduler="asha"),
    "tpe + top-k": Strategy(TPE, scheduler="top_k"),
    "tpe + adaptive": Strategy(TPE, scheduler="adaptive"),
    "tpe + forecast": Strategy(TPE, scheduler="forecast"),
    # any sampler proposes new configurations; two sets keep the matrix within ~1.5 h
    "random + asha, promotion": Strategy(
        RANDOM, scheduler="asha", sets=("nmtlc", "synthetic-ranked")
    ),
}


def load_set(name: str, data: Path | None) -> list[Task]:
    if name == "smollm2":
        return list(smollm2.load_tasks())
    if name == "nmtlc":
        if data is None:
            raise ValueError("the nmtlc set needs the path to nmtlc.pkl")
        return list(load_tasks(data))
    return [make_task(late=LATE[name], seed=seed) for seed in range(SYNTHETIC_TASKS)]


def training_length(task: Task) -> int:
    """The median number of evaluations of a configuration: what a user knows in advance."""
    return round(median(len(c) for c in task.curves.values()))


def first_rung(task: Task) -> int:
    # ASHA's usual r_min = R / eta^2: rungs at R/9 and R/3 below the end, eta = 3.
    return max(1, round(training_length(task) / 9))


def _scheduler(kind: str, task: Task) -> dict[str, Any]:
    if kind == "top_k":  # score at 20% of training, continue the best 3 of at least 9
        at = max(1, round(training_length(task) / 5))
        return {"type": "top_k", "at_steps": at, "k": 3, "min_scored": 9}
    return {"type": kind, "min_steps": first_rung(task)}


def _search(task: Task, strategy: Strategy) -> SearchSpec:
    return SearchSpec.model_validate(
        {
            "space": task.search_space,
            "sampler": strategy.sampler,
            "pruner": strategy.pruner or {"type": "none"},
            "scheduler": (
                _scheduler(strategy.scheduler, task) if strategy.scheduler else {"type": "none"}
            ),
            "budget": {"max_trials": 10_000},
        }
    )


def cost_to_targets(
    best_curve: list[tuple[float, float]], best_value: float, grid: float
) -> dict[str, float]:
    """Per target, the cost (share of the full-grid cost) at which ``best_curve`` (device
    cost, best value so far) first got within it of ``best_value``; inf if never."""
    sim = Simulation(best_curve=best_curve)
    return {str(t): sim.cost_to_reach(best_value * (1 + t)) / grid for t in TARGETS}


def target_stats(values: list[float]) -> dict[str, Any]:
    """Median (IQR) of runs' costs to a target and how many reached it (inf = never)."""
    q25, q50, q75 = _quantiles(values)
    reached = sum(not math.isinf(v) for v in values)
    return {
        "median": q50,
        "iqr": (q25, q75),
        "reached": reached / len(values),
        "reached_runs": reached,
    }


def _run(args: tuple[str | None, str, str, int, int]) -> dict[str, Any]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(1)  # GP fits: one thread per pool process, no oversubscription
    data, task_set, name, workers, seed = args
    strategy = STRATEGIES[name]
    results = []
    for task in load_set(task_set, Path(data) if data else None):
        grid = task.full_grid_cost
        sim = simulate(
            _search(task, strategy), task, workers=workers, seed=seed, max_cost=MAX_COST * grid
        )
        results.append(
            {
                "task": task.name,
                "cost_to_target": cost_to_targets(sim.best_curve, task.best_value, grid),
                "regret_at": {
                    str(b): ((v - task.best_value) / task.best_value if v is not None else None)
                    for b in BUDGET_POINTS
                    for v in [sim.best_at(b * grid)]
                },
                "curve": [
                    (c / grid, (v - task.best_value) / task.best_value) for c, v in sim.best_curve
                ],
                "configurations": len(sim.trials),
                "paused": sum(len(t.segments) > 1 or t.state == "paused" for t in sim.trials)
                / max(1, len(sim.trials)),
                "stalled": sim.stalled_workers > 0,
            }
        )
    return {"set": task_set, "strategy": name, "workers": workers, "seed": seed, "tasks": results}


def rank_agreement(tasks: list[Task]) -> dict[str, Any]:
    """Per task, Spearman's rho between the score at a rung and the final score, over the
    configurations whose curve goes past the rung (the whole grid, not a run's sample)."""
    out: dict[str, list[float | None]] = {"first rung": [], "top-k rung": [], "R/3 rung": []}
    for task in tasks:
        length = training_length(task)
        rungs = {
            "first rung": first_rung(task),
            "top-k rung": max(1, round(length / 5)),
            "R/3 rung": 3 * first_rung(task),
        }
        for key, rung in rungs.items():
            past = [c for c in task.curves.values() if len(c) > rung]
            out[key].append(spearman([c[rung - 1] for c in past], [c[-1] for c in past]))
    return {k: [None if v is None else round(v, 2) for v in vs] for k, vs in out.items()}


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    arr = np.array(values, dtype=float)
    q25, q50, q75 = np.quantile(arr, [0.25, 0.5, 0.75], method="lower")
    return float(q25), float(q50), float(q75)


def _fmt(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:.3f}"


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    order = {name: i for i, name in enumerate(STRATEGIES)}
    keys = sorted(
        {(r["set"], r["strategy"], r["workers"]) for r in runs},
        key=lambda k: (SETS.index(k[0]), k[2], order[k[1]]),
    )
    for task_set, strategy, workers in keys:
        tasks = [
            t
            for r in runs
            if (r["set"], r["strategy"], r["workers"]) == (task_set, strategy, workers)
            for t in r["tasks"]
        ]
        costs = {}
        for target in TARGETS:
            costs[str(target)] = target_stats([t["cost_to_target"][str(target)] for t in tasks])
        regrets = {}
        for b in BUDGET_POINTS:
            vals = [t["regret_at"][str(b)] for t in tasks]
            regrets[str(b)] = median([math.inf if v is None else v for v in vals])
        rows.append(
            {
                "set": task_set,
                "strategy": strategy,
                "workers": workers,
                "cost_to_target": costs,
                "median_regret_at": regrets,
                "runs": len(tasks),
                "paused_share": float(np.mean([t["paused"] for t in tasks])),
                "configurations": median(t["configurations"] for t in tasks),
                "stalled_runs": sum(t["stalled"] for t in tasks),
                "seeds": len(
                    {
                        r["seed"]
                        for r in runs
                        if (r["set"], r["strategy"], r["workers"]) == (task_set, strategy, workers)
                    }
                ),
            }
        )
    return rows


def merge(new: list[dict[str, Any]], old: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``new`` rows, and the ``old`` ones of strategies, sets and worker counts not in them, in
    the table's order."""
    done = {(r["set"], r["strategy"], r["workers"]) for r in new}
    kept = [r for r in old if (r["set"], r["strategy"], r["workers"]) not in done]
    order = {name: i for i, name in enumerate(STRATEGIES)}
    return sorted(
        new + [r for r in kept if r["strategy"] in order],
        key=lambda r: (SETS.index(r["set"]), r["workers"], order[r["strategy"]]),
    )


def merge_runs(new: list[dict[str, Any]], old: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``new`` runs, and the ``old`` ones of strategies, sets and worker counts not in them:
    what the plots of a matrix run in batches draw."""
    done = {(r["set"], r["strategy"], r["workers"]) for r in new}
    return new + [r for r in old if (r["set"], r["strategy"], r["workers"]) not in done]


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per set and worker count: the scheduler row with the lowest median cost to 0.1% against
    the default; the target is <= 1/3 of its median cost, reached in as many runs."""
    out = []
    for task_set in SETS:
        for workers in sorted({r["workers"] for r in rows}):
            group = [r for r in rows if (r["set"], r["workers"]) == (task_set, workers)]
            default = next((r for r in group if r["strategy"] == DEFAULT), None)
            scheduled = [r for r in group if r["strategy"] in SCHEDULED]
            if default is None or not scheduled:
                continue
            best = min(
                scheduled,
                key=lambda r: (
                    r["cost_to_target"]["0.001"]["median"],
                    -r["cost_to_target"]["0.001"]["reached"],
                ),
            )
            d, b = default["cost_to_target"]["0.001"], best["cost_to_target"]["0.001"]
            ratio = b["median"] / d["median"] if math.isfinite(d["median"]) else math.nan
            met = ratio <= 1 / 3 and b["reached_runs"] >= d["reached_runs"]
            out.append(
                {
                    "set": task_set,
                    "workers": workers,
                    "best": best["strategy"],
                    "cost_ratio": ratio,
                    "reached": b["reached_runs"],
                    "default_reached": d["reached_runs"],
                    "runs": best["runs"],
                    "met": met,
                }
            )
    return out


def _markdown(
    rows: list[dict[str, Any]], meta: dict[str, Any], peers: dict[str, Any] | None = None
) -> str:
    lines = [
        "# Search strategies and pause-and-continue schedulers on learning curves (simulated)",
        "",
        f"Commit `{meta['commit']}`, {meta['machine']}, {meta['seeds']} seeds per row and "
        f"task unless a row says otherwise, {meta['seconds']:.0f} s with {meta['jobs']} "
        "processes (the last batch).",
        "",
        "A configuration's value is its curve's **last** point (the final evaluation a worker "
        "reports) and a task's best is the best final value of its grid. Earlier results "
        "(commit 6962665) took each trial's curve minimum and NMTLC's best minimum; every row "
        "here, old strategies included, ran under the new rule, so they differ from it.",
        "",
        "Cost = modelled device-seconds / full-grid cost (every configuration trained once). "
        f"Runs stop at {MAX_COST}x the grid cost ('never' = not reached by then). Cells: "
        "median cost (IQR), and runs that reached the target. 'paused' = share of "
        "configurations a scheduler paused at least once. Scheduler rungs are in evaluations "
        "(curve points): ASHA and the adaptive scheduler start at R/9 with eta = 3 (R = the "
        "task's median curve length), top-k scores at R/5 and continues the best 3 of >= 9.",
        "",
        *goal.goal_table(rows, meta, peers, RECOMMENDED, SETS),
    ]
    if meta.get("not_run"):
        lines += [
            "Rows of earlier runs not run again (to save CPU; see the commit that last ran "
            "them): " + ", ".join(meta["not_run"]) + ".",
            "",
        ]
    agreement = meta["rank_agreement"]
    lines += [
        "## Rank agreement of early scores with final scores",
        "",
        "Spearman's rho per task over the whole grid (configurations whose curve goes "
        "past the rung):",
        "",
        "| set | first rung (R/9) | top-k rung (R/5) | R/3 |",
        "|---|---|---|---|",
    ]
    for task_set, per in agreement.items():
        cells = []
        for key in ("first rung", "top-k rung", "R/3 rung"):
            vals = [v for v in per[key] if v is not None]
            cells.append(
                f"median {median(vals):.2f} ({min(vals):.2f} to {max(vals):.2f})" if vals else "-"
            )
        lines.append(f"| {task_set} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Target: a scheduler within 0.1% at <= 1/3 of the default's median cost, in as "
        "many runs",
        "",
        "| set | workers | best scheduler row | its median cost / default's | runs reaching "
        "0.1% (default) | met |",
        "|---|---|---|---|---|---|",
    ]
    for v in meta["verdicts"]:
        lines.append(
            f"| {v['set']} | {v['workers']} | {v['best']} | {v['cost_ratio']:.2f} | "
            f"{v['reached']}/{v['runs']} ({v['default_reached']}) | "
            f"{'yes' if v['met'] else 'no'} |"
        )
    for task_set in SETS:
        group = [r for r in rows if r["set"] == task_set]
        # a set only the peers ran on (ours not run there yet): their rows alone
        alone = [] if group else goal.peer_lines_all(peers, task_set, len(BUDGET_POINTS) + 1)
        if not group and not alone:
            continue
        lines += [
            "",
            f"## {task_set}",
            "",
            "| workers | strategy | cost to 1% | reached | cost to 0.1% | reached | "
            + " | ".join(f"regret @ {b}x" for b in BUDGET_POINTS)
            + " | paused |",
            "|---|---|---|---|---|---|" + "---|" * len(BUDGET_POINTS) + "---|",
            *alone,
        ]
        for i, r in enumerate(group):
            regrets = " | ".join(_fmt(r["median_regret_at"][str(b)]) for b in BUDGET_POINTS)
            targets = " | ".join(
                f"{_fmt(c['median'])} ({_fmt(c['iqr'][0])}-{_fmt(c['iqr'][1])}) | "
                f"{c['reached_runs']}/{r['runs']}"
                for c in (r["cost_to_target"][str(t)] for t in TARGETS)
            )
            name = f"**{r['strategy']}** (default)" if r["strategy"] == DEFAULT else r["strategy"]
            if r.get("seeds", meta["seeds"]) != meta["seeds"]:
                name += f" ({r['seeds']} seed{'s' if r['seeds'] != 1 else ''})"
            lines.append(
                f"| {r['workers']} | {name} | {targets} | {regrets} | {r['paused_share']:.0%} |"
            )
            if i + 1 == len(group) or group[i + 1]["workers"] != r["workers"]:
                lines += goal.peer_lines(peers, task_set, r["workers"], len(BUDGET_POINTS) + 1)
    stalled = [
        f"{r['strategy']} at {r['workers']} worker(s): {r['stalled_runs']} of {r['runs']} runs"
        for r in rows
        if r["stalled_runs"]
    ]
    if stalled:
        lines += [
            "",
            "NMTLC runs where a worker stopped early because its sampler kept "
            "proposing configurations it has no curve for (269 of 270 are recorded): "
            + "; ".join(stalled)
            + ".",
        ]
    return "\n".join(lines) + "\n"


def _plot(runs: list[dict[str, Any]], task_set: str, workers: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, MAX_COST, 151)
    fig, ax = plt.subplots(figsize=(8, 5))
    for strategy in STRATEGIES:
        tasks = [
            t
            for r in runs
            if (r["set"], r["strategy"], r["workers"]) == (task_set, strategy, workers)
            for t in r["tasks"]
        ]
        if not tasks:
            continue
        curves = []
        for t in tasks:
            xs = [c for c, _ in t["curve"]]
            ys = [v for _, v in t["curve"]]
            idx = np.searchsorted(xs, grid, side="right") - 1
            # no finished configuration yet counts as infinite regret: the median never rises
            curves.append([ys[i] if i >= 0 else np.inf for i in idx])
        style = "--" if strategy in SCHEDULED else "-"
        ax.plot(grid, np.median(np.array(curves, dtype=float), axis=0), style, label=strategy)
    ax.set_yscale("log")
    ax.set_xlabel("device cost / full-grid cost")
    ax.set_ylabel("median best-so-far regret (relative loss)")
    ax.set_title(f"{task_set}, {workers} workers")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _peers() -> dict[str, Any] | None:
    path = RESULTS / "peers.json"
    return json.loads(path.read_text()) if path.exists() else None


def tables_only() -> str:
    """strategies.md again from the saved strategies.json and peers.json; runs nothing."""
    data = json.loads((RESULTS / "strategies.json").read_text())
    markdown = _markdown(data["rows"], data["meta"], _peers())
    (RESULTS / "strategies.md").write_text(markdown)
    return markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("data", type=Path, nargs="?", help="NMTLC's nmtlc.pkl")
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="run nothing: rewrite strategies.md from strategies.json and peers.json",
    )
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument(
        "--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES)
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the rows of bench/results/strategies.json that this run does not redo "
        "(a matrix run in batches)",
    )
    args = parser.parse_args()
    if args.tables_only:
        print(tables_only())
        return
    if args.data is None and "nmtlc" in args.sets:
        parser.error("the path to nmtlc.pkl is required for --sets nmtlc")
    jobs = [
        (str(args.data) if args.data else None, task_set, name, w, seed)
        for task_set in args.sets
        for name in args.strategies
        if task_set in STRATEGIES[name].sets
        for w in args.workers
        if STRATEGIES[name].runs_with(w)
        for seed in range(args.seeds)
    ]
    started = time.time()
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(_run, jobs, chunksize=2))
    rows = summarise(runs)
    if args.keep:
        rows = merge(rows, json.loads((RESULTS / "strategies.json").read_text())["rows"])
    sets = [s for s in SETS if any(r["set"] == s for r in rows)]
    meta = {
        "commit": commit(),
        "machine": machine(),
        "seeds": args.seeds,
        "jobs": args.jobs,
        "seconds": time.time() - started,
        "tasks": {s: [t.name for t in load_set(s, args.data)] for s in sets},
        "rank_agreement": {s: rank_agreement(load_set(s, args.data)) for s in sets},
        "verdicts": verdicts(rows),
        "not_run": [n for n in STRATEGIES if n not in {r["strategy"] for r in rows}],
    }
    save("strategies", {"meta": meta, "rows": rows}, _markdown(rows, meta, _peers()))
    if args.keep:
        runs = merge_runs(runs, json.loads(RUNS.read_text()) if RUNS.exists() else [])
    RUNS.write_text(json.dumps(runs))
    for task_set in args.sets:
        for w in args.workers:
            _plot(runs, task_set, w, RESULTS / f"strategies-{task_set}-w{w}.png")
    print(_markdown(rows, meta, _peers()))


if __name__ == "__main__":
    main()
