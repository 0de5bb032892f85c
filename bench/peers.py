"""Peer HPO libraries (Syne Tune 0.13, Ray Tune 2.60) on the curve sets of bench.strategies.

    python -m bench.peers --setup                      # makes .peers-venv/ (pinned versions)
    python -m bench.peers PATH/TO/nmtlc.pkl [--seeds 5] [--workers 1 8] [--jobs 2]
        [--sets nmtlc synthetic-mixed smollm2] [--methods ...] [--python .peers-venv/bin/python]
        [--cap 120]

The peers need NumPy < 1.27, so they run in their own virtualenv (``bench/peers-requirements.txt``)
with ``bench/peer_runner.py``, which imports no project code. This side writes every task as
JSON (``export_task``), runs the runner under ``nice -n 10`` in ``--jobs`` processes, reads
their traces and computes cost to 1% / 0.1% of the task's best final value with the functions of
bench.strategies. A run past ``--cap`` seconds of real time is stopped and counted as 'did not
finish' beside its row. Rows of the previous bench/results/peers.json whose (set, workers,
method) has no run here are kept, marked with the commit they ran at. Our default's rows are
bench.strategies' committed ones (``bench/results/strategies.json``). Writes
bench/results/peers.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import venv
from collections import Counter
from pathlib import Path
from typing import Any

from bench import RESULTS, ROOT, commit, goal, machine, save
from bench.strategies import (
    DEFAULT,
    MAX_COST,
    SETS,
    TARGETS,
    Task,
    cost_to_targets,
    load_set,
    target_stats,
)
from hpo.core.spec import CategoricalDistribution, SearchSpace
from hpo.simulate import CurvePoint, NotRecorded

VENV = ROOT / ".peers-venv"
REQUIREMENTS = ROOT / "bench" / "peers-requirements.txt"
RUNNER = ROOT / "bench" / "peer_runner.py"
# The runner's methods (bench/peer_runner.py METHODS): Ray Tune runs at one worker only.
SYNE_TUNE = (
    "st gp bo",
    "st asha stop",
    "st asha promotion",
    "st bohb",
    "st mobster",
    "st hypertune",
    "st dyhpo",
)
RAY = ("ray asha", "ray hyperband + optuna")
METHODS = SYNE_TUNE + RAY
# Which runs first when time is short: the best peers so far first, DyHPO last; the fast
# methods' runs (seconds each) before the slow ones' (GP fits, Ray's runtime: 0.5-2 min).
FAST = ("st asha promotion", "st asha stop", "st bohb")
PRIORITY = (
    "st gp bo",
    "st asha promotion",
    "st asha stop",
    "st bohb",
    "st hypertune",
    "st mobster",
    "ray hyperband + optuna",
    "ray asha",
    "st dyhpo",
)
NAMES = ("learning_rate", "per_device_train_batch_size", "lora_r")


def export_task(task: Task) -> dict[str, Any]:
    """A task as the runner reads it: choices per parameter, each configuration's curve."""
    space = task.search_space
    choices = {
        n: list(d.choices)
        for n in NAMES
        if isinstance(d := getattr(space, n), CategoricalDistribution)
    }
    configurations = []
    for key in task.curves:
        params = dict(zip(NAMES, key, strict=True))
        configurations.append({"params": params, "curve": [list(p) for p in task.curve(params)]})
    return {
        "name": task.name,
        "choices": choices,
        "configurations": configurations,
        "best_value": task.best_value,
        "full_grid_cost": task.full_grid_cost,
    }


class ExportedTask:
    """An exported task read back: the same objective as the one written."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.name: str = data["name"]
        self.choices: dict[str, list[Any]] = data["choices"]
        self.points = {
            tuple(c["params"][n] for n in NAMES): [(p[0], p[1]) for p in c["curve"]]
            for c in data["configurations"]
        }
        self.curves = {k: [v for _, v in pts] for k, pts in self.points.items()}
        self.best_value: float = data["best_value"]
        self.full_grid_cost: float = data["full_grid_cost"]

    @property
    def search_space(self) -> SearchSpace:
        return SearchSpace.model_validate(
            {n: CategoricalDistribution(choices=c) for n, c in self.choices.items()}
        )

    def curve(self, params: dict[str, Any]) -> list[CurvePoint]:
        key = tuple(params[n] for n in NAMES)
        if key not in self.points:
            raise NotRecorded(f"{self.name} has no configuration {params}")
        return list(self.points[key])


def best_curve(trace: list[list[Any]], *, completed_only: bool) -> list[tuple[float, float]]:
    """(device cost, best value) each time a trial end improved the best, as
    ``hpo.simulate.Simulation.best_curve``; a trial's value is its last reported point."""
    out: list[tuple[float, float]] = []
    for cost, value, completed in trace:
        if (completed or not completed_only) and (not out or value < out[-1][1]):
            out.append((cost, value))
    return out


def setup(python: str = sys.executable) -> Path:
    """Create .peers-venv/ with the pinned peers (a few minutes, from the package index)."""
    if not (VENV / "bin" / "python").exists():
        venv.create(VENV, with_pip=True)
    subprocess.run(
        [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
        check=True,
    )
    return VENV / "bin" / "python"


def _jobs(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    jobs, tasks = [], {}
    for task_set in args.sets:
        for task in load_set(task_set, args.data):
            path = work / "tasks" / (task.name.replace("/", "_") + ".json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(export_task(task)))
            tasks[task.name] = {
                "set": task_set,
                "best": task.best_value,
                "grid": task.full_grid_cost,
            }
            for method in args.methods:
                for w in args.workers:
                    if method in RAY and w != 1:
                        continue
                    for seed in range(dict(args.set_seeds).get(task_set, args.seeds)):
                        name = f"{task.name}-{method}-w{w}-s{seed}".replace("/", "_")
                        out = work / "runs" / f"{name}.json"
                        jobs.append(
                            {
                                "task": str(path),
                                "name": task.name,
                                "method": method,
                                "workers": w,
                                "seed": seed,
                                "out": str(out),
                                "max_cost": MAX_COST * task.full_grid_cost,
                                "wall_cap": args.cap,
                            }
                        )
    (work / "runs").mkdir(parents=True, exist_ok=True)
    # fast methods first, then GP BO (the best peer so far), then the other slow ones; seed 0
    # of every set before seed 1
    sets = {t: i for i, t in enumerate(args.sets)}
    jobs.sort(
        key=lambda j: (
            j["method"] not in FAST,
            j["method"] != "st gp bo",
            j["seed"],
            PRIORITY.index(j["method"]),
            sets[tasks[j["name"]]["set"]],
            j["workers"],
        )
    )
    return jobs, tasks


def _run_all(jobs: list[dict[str, Any]], python: str, processes: int, work: Path) -> None:
    # Ray starts a cluster per process: its runs share one process; Syne Tune's the rest.
    # One process runs them all in order (the cluster starts at the first Ray run).
    ray = [j for j in jobs if j["method"] in RAY]
    rest = [j for j in jobs if j["method"] not in RAY]
    chunks = (
        [jobs]
        if processes == 1
        else [c for c in (ray, *(rest[i::processes] for i in range(processes))) if c]
    )
    procs = []
    for i, chunk in enumerate(chunks):
        path = work / f"jobs-{i}.json"
        path.write_text(json.dumps(chunk))
        log = (work / f"runner-{i}.log").open("w")
        procs.append(
            subprocess.Popen(
                ["nice", "-n", "10", python, str(RUNNER), str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        )
    for p in procs:
        p.wait()


def summarise(runs: list[dict[str, Any]], tasks: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted(
        {(tasks[r["task"]]["set"], r["workers"], r["method"]) for r in runs},
        key=lambda k: (SETS.index(k[0]), k[1], METHODS.index(k[2])),
    )
    for task_set, workers, method in keys:
        group = [
            r
            for r in runs
            if (tasks[r["task"]]["set"], r["workers"], r["method"]) == (task_set, workers, method)
        ]
        ok = [r for r in group if "error" not in r]
        late = [r for r in group if r.get("timed_out")]
        row: dict[str, Any] = {
            "set": task_set,
            "workers": workers,
            "strategy": method,
            "runs": len(ok),
            "seeds": len({r["seed"] for r in ok}),
            "errors": sorted({r["error"] for r in group if "error" in r and r not in late}),
            "unfinished": len(late),
            "wall_cap": max((r["wall_cap"] for r in late), default=None),
        }
        # headline: only completed trials count, as for ours in bench.strategies
        for rule, completed_only in (("cost_to_target", True), ("last_point", False)):
            costs = [
                cost_to_targets(
                    best_curve(r["trace"], completed_only=completed_only),
                    tasks[r["task"]]["best"],
                    tasks[r["task"]]["grid"],
                )
                for r in ok
            ]
            row[rule] = {str(t): target_stats([c[str(t)] for c in costs]) for t in TARGETS}
        covered = len({r["task"] for r in ok})
        total = sum(t["set"] == task_set for t in tasks.values())
        row["tasks"] = f"{covered} of {total} tasks" if covered < total else None
        if ok:
            row["configurations"] = sorted(r["configurations"] for r in ok)[len(ok) // 2]
            row["seconds"] = sum(r["seconds"] for r in ok)
        rows.append(row)
    return rows


def carry_over(
    previous: dict[str, Any] | None, rows: list[dict[str, Any]], sets: list[str]
) -> list[dict[str, Any]]:
    """Peer rows of an earlier peers.json (same runner, same exported tasks) whose set,
    worker count and method have no row in ``rows``; each keeps the commit it ran at."""
    if previous is None:
        return []
    have = {(r["set"], r["workers"], r["strategy"]) for r in rows}
    return [
        {**r, "commit": r.get("commit", previous["meta"]["commit"])}
        for r in previous["rows"]
        if not r["strategy"].startswith("ours")
        and r["set"] in sets
        and (r["set"], r["workers"], r["strategy"]) not in have
    ]


def ours(sets: list[str], workers: list[int]) -> list[dict[str, Any]]:
    """Our default's rows from the committed bench.strategies run."""
    data = json.loads((RESULTS / "strategies.json").read_text())
    return [
        {
            **r,
            "strategy": f"ours: {DEFAULT} (default)",
            "seeds": data["meta"]["seeds"],
            "commit": data["meta"]["commit"],
        }
        for r in data["rows"]
        if r["strategy"] == DEFAULT and r["set"] in sets and r["workers"] in workers
    ]


def _unfinished(r: dict[str, Any]) -> str:
    """'k did not finish in N s' for a row with runs stopped at the wall cap, else ''."""
    return (
        f"{r['unfinished']} did not finish in {r['wall_cap']:.0f} s" if r.get("unfinished") else ""
    )


def _fewer_seeds(r: dict[str, Any], meta: dict[str, Any]) -> str:
    """'k of N seeds' for a peer row that ran fewer seeds per task than its set's N, else ''."""
    planned = (meta.get("set_seeds") or {}).get(r["set"], meta["seeds"])
    seeds = r.get("seeds")  # rows carried over from before it was recorded have none
    if r["strategy"].startswith("ours") or not seeds or seeds >= planned:
        return ""
    return f"{seeds} of {planned} seeds"


def caps_text(meta: dict[str, Any]) -> str:
    """The real-time cap per run: '150 s', or '150 s (300 s for 77 runs)' where some runs
    were started under another --cap (the cap a run ran under is recorded with it)."""
    caps = {float(c): n for c, n in (meta.get("caps") or {}).items()}
    other = ", ".join(
        f"{c:.0f} s for {n} runs" for c, n in sorted(caps.items()) if c != meta["cap"]
    )
    return f"{meta['cap']:.0f} s" + (f" ({other})" if other else "")


def _cell(c: dict[str, Any], runs: int) -> str:
    f = lambda x: "never" if math.isinf(x) else f"{x:.3f}"  # noqa: E731
    return f"{f(c['median'])} ({f(c['iqr'][0])}-{f(c['iqr'][1])}) | {c['reached_runs']}/{runs}"


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Peer libraries on the curve sets of bench.strategies (simulated)",
        "",
        f"Commit `{meta['commit']}`, {meta['machine']}, {goal.seeds_text(meta)} per row and "
        "task, "
        f"{meta['runner_seconds']:.0f} s of runs (their sum; {meta['jobs']} runner process(es)), "
        f"{meta['jobs_total'] - meta['missing_runs']} of the {meta['jobs_total']} runs of the "
        "full matrix (methods x tasks x seeds x W) ended "
        f"({meta.get('unfinished_runs', 0)} of them stopped at their cap); "
        f"{', '.join(meta['versions'])}.",
        "",
        "Each peer runs through its own runtime on the exported curves (bench/peer_runner.py): "
        "Syne Tune's `UserBlackboxBackend` (each configuration's own curve) + `SimulatorCallback`"
        " with W simulated workers; Ray Tune's `Tuner` at one worker, a function trainable that "
        "replays the curve and checkpoints its step (HyperBand resumes without paying twice). "
        "Library defaults except: Ray ASHA proposes every configuration once, in a seeded "
        "random order (Ray's random search repeats configurations of a finite grid); DyHPO "
        "rungs every R/9 points with a GP refit every 5th decision on <= 200 points (with its "
        "defaults one 48-configuration run did not finish in 5 min). "
        "Cost = our device-seconds (recorded cost of every point trained, plus the elapsed part "
        "of in-flight points) / full-grid cost. Rungs as ours: first at R/9 (R = median curve "
        "length), eta = 3, max_t = the longest curve. As for ours in bench.strategies, the "
        "cost columns count only trials that ran their whole curve (value = its last point); "
        "the last column also counts a stopped or paused trial's last reported point, which on "
        "NMTLC can lie below the best final value (curves that rise again). A peer run stops "
        "once a "
        f"completed trial is within 0.1%, or at {MAX_COST}x the grid cost ('never'). Cells: "
        "median cost (IQR) | runs reaching the target. "
        f"Our default's rows: bench/results/strategies.json (commit `{meta['ours_commit']}`, "
        f"seeds 0..{meta['ours_seeds'] - 1}; peers ran {goal.seeds_text(meta)}). "
        f"A peer run still going after {caps_text(meta)} of real time was stopped and is "
        "counted apart ('k did not finish in N s'), not as a run that never reached the target. "
        "A row marked with a commit was carried over from the peers.json of that commit (same "
        "runner, same exported tasks) because it did not run again here; it ran under the caps "
        "that peers.json states.",
    ]
    for task_set in SETS:
        for workers in sorted({r["workers"] for r in rows}):
            group = [r for r in rows if (r["set"], r["workers"]) == (task_set, workers)]
            if not group:
                continue
            lines += [
                "",
                f"## {task_set}, {workers} worker(s)",
                "",
                "| strategy | cost to 1% | reached | cost to 0.1% | reached | "
                "0.1%, last point of any trial | reached |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in group:
                runs = r["runs"]
                if not runs and (r.get("errors") or r.get("unfinished")):
                    why = f"failed: {r['errors'][0][:120]}" if r.get("errors") else _unfinished(r)
                    lines.append(f"| {r['strategy']} | {why} |||||| ")
                    continue
                t1, t2 = (r["cost_to_target"][str(t)] for t in TARGETS)
                done = r.get("last_point", r["cost_to_target"])["0.001"]
                name = (
                    f"**{r['strategy']}**" if r["strategy"].startswith("ours") else r["strategy"]
                )
                notes = [
                    n
                    for n in (
                        r.get("tasks"),  # a run cut short: say which part of the set it covers
                        _fewer_seeds(r, meta),
                        _unfinished(r),
                        f"commit {r['commit']}" if r.get("commit") and "ours" not in name else "",
                    )
                    if n
                ]
                if notes:
                    name += f" ({'; '.join(notes)})"
                lines.append(
                    f"| {name} | {_cell(t1, runs)} | {_cell(t2, runs)} | {_cell(done, runs)} |"
                )
    failed = [
        f"{r['strategy']} ({r['set']}, W={r['workers']}): {e}"
        for r in rows
        for e in r.get("errors", [])
    ]
    if failed:
        lines += ["", "Failed runs: " + "; ".join(failed)]
    return "\n".join(lines) + "\n"


def _versions(python: str) -> list[str]:
    code = (
        "import importlib.metadata as m; print(*[f'{p} {m.version(p)}' for p in "
        "('syne-tune', 'ray', 'optuna', 'numpy')], sep=';')"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("data", type=Path, nargs="?", help="NMTLC's nmtlc.pkl")
    parser.add_argument("--setup", action="store_true", help="create .peers-venv/ and exit")
    default_python = os.environ.get("PEERS_PYTHON", str(VENV / "bin" / "python"))
    parser.add_argument("--python", default=default_python, help="the peers venv's python")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--set-seeds",
        nargs="+",
        default=[],
        type=lambda s: (s.split("=")[0], int(s.split("=")[1])),
        metavar="SET=N",
        help="seeds for one set instead of --seeds (e.g. smollm2=10: one small task)",
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--cap", type=float, default=120.0, help="seconds of real time per run (then stopped)"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=ROOT / ".peers-work",
        help="exported tasks and per-run traces; finished runs are reused",
    )
    parser.add_argument(
        "--previous",
        type=Path,
        default=RESULTS / "peers.json",
        help="an earlier peers.json whose rows are kept where this run has none",
    )
    parser.add_argument(
        "--summarise-only",
        action="store_true",
        help="run nothing: tabulate the finished runs under --work (e.g. after a cut-short run)",
    )
    args = parser.parse_args()
    if args.setup:
        print(setup())
        return
    if args.data is None and "nmtlc" in args.sets:
        parser.error("the path to nmtlc.pkl is required for --sets nmtlc")
    started = time.time()
    jobs, tasks = _jobs(args, args.work)
    if not args.summarise_only:
        _run_all(jobs, args.python, args.jobs, args.work)
    runs = [
        # the cap a run ran under (runs written before it was recorded: this call's)
        {"wall_cap": j["wall_cap"], **json.loads(Path(j["out"]).read_text()), "task": j["name"]}
        for j in jobs
        if Path(j["out"]).exists()
    ]
    mine = ours(args.sets, args.workers)
    rows = summarise(runs, tasks)
    previous = json.loads(args.previous.read_text()) if args.previous.exists() else None
    rows += carry_over(previous, rows, args.sets)
    rows = sorted(
        mine + rows,
        key=lambda r: (
            SETS.index(r["set"]),
            r["workers"],
            METHODS.index(r["strategy"]) if r["strategy"] in METHODS else -1,
        ),
    )
    meta = {
        "commit": commit(),
        "machine": machine(),
        "seeds": args.seeds,
        "jobs": args.jobs,
        "seconds": time.time() - started,
        "versions": _versions(args.python),
        "runner_seconds": sum(r.get("seconds", 0.0) for r in runs),
        "jobs_total": len(jobs),
        "ours_seeds": mine[0]["seeds"] if mine else 0,
        "ours_commit": mine[0]["commit"] if mine else "",
        "missing_runs": len(jobs) - len(runs),
        "unfinished_runs": sum(bool(r.get("timed_out")) for r in runs),
        "cap": args.cap,
        "caps": dict(Counter(f"{r['wall_cap']:.0f}" for r in runs)),
        "set_seeds": dict(args.set_seeds),
    }
    save("peers", {"meta": meta, "rows": rows}, _markdown(rows, meta))
    print(_markdown(rows, meta))


if __name__ == "__main__":
    main()
