"""Warm start, leave one task out: cold start vs starts from the other tasks' results.

    python -m bench.warm_start PATH/TO/nmtlc.pkl [--seeds 0 1 2] [--workers 1 8]
        [--sets nmtlc synthetic-family] [--variants ...]   # runs -> warm-start-runs.json
    python -m bench.warm_start --report        # warm-start.{md,json} from the runs + peers.json

For each seed, every task of a set first runs cold (the service's default search, as in
``bench.strategies``, to 1.5x the grid cost: an earlier study that ran its budget); then each
task runs again per variant, warm-started from the finished trials of the *other* tasks' cold
runs of the same seed, nearest tasks first (NMTLC's order: same language pair, then family;
the synthetic family: the nearest share of late blooming, whose best learning rate lies
nearest). Warm runs stop once a configuration completes within 0.1% of the task's best final
value (the measure is unchanged by the stop). A variant searched with a scheduler (``setting``)
is also set beside that setting's own cold start, run the same way. ``synthetic-family`` is
one task per share of late blooming 0, 0.25, .., 1 (seed 0): related tasks whose best
configuration moves.

``--report`` sets each variant beside the cold start and the best peer's cold start (the
lowest median cost to 0.1% in ``bench/results/peers.json`` for the set and worker count,
re-read each time), and per task where warm cost more than cold, by how much.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import median
from typing import Any

import optuna

from bench import RESULTS, commit, goal, machine, save
from bench.strategies import DEFAULT, MAX_COST, STRATEGIES, _fmt, _search, target_stats
from bench.warm_curves import MAX_SOURCES, WarmForecastScheduler
from hpo.core.factory import build_sampler
from hpo.core.forecast import Curve
from hpo.core.spec import ForecastSchedulerSpec, SearchSpec, WarmStartSpec, grid_size
from hpo.core.transfer import TransferSampler
from hpo.core.warm_start import (
    RANKING_LIMIT,
    TRUST_THRESHOLD,
    Ranked,
    SourceStudy,
    WarmConfig,
    consensus_configs,
    consensus_ranking,
    warm_start_configs,
)
from hpo.nmtlc import load_tasks
from hpo.simulate import Simulation, simulate
from hpo.synthetic import make_task

RUNS = RESULTS / "warm-start-runs.json"
SETS = ("nmtlc", "synthetic-family")
FAMILY_LATE = (0.0, 0.25, 0.5, 0.75, 1.0)
# the peers' curve set for ours: the family has no peer runs; synthetic-mixed is its middle
PEER_SET = {"nmtlc": "nmtlc", "synthetic-family": "synthetic-mixed"}
TARGET = 0.001
TOP_K = 3
SERVICE = "top 3 + first batch, consensus"
FORECAST = "tpe + forecast"  # the scheduler-run variants' setting (bench.strategies')
Sampler = Callable[[optuna.samplers.BaseSampler, int], optuna.samplers.BaseSampler]


@dataclass(frozen=True)
class Variant:
    """How a warm run uses the sources: configurations to enqueue and/or a sampler wrapper."""

    enqueue: Callable[[list[SourceStudy], Any], list[WarmConfig]] | None = None
    sampler: Callable[[list[SourceStudy], Any], Sampler] | None = None
    # as the service runs it: a search.warm_start spec, the consensus ranking stored
    ranking: bool = False
    # a sampler wrapper that needs the run's seed (it builds its own seeded samplers)
    seeded_sampler: Callable[[list[SourceStudy], Any, int], Sampler] | None = None
    # the setting (a ``bench.strategies`` name) searched warm, and cold for its own ratio
    setting: str = DEFAULT
    # the scheduler also learns from the nearest ``curves`` sources' finished curves
    # (bench.warm_curves; 0: none), only if they agree on which way early ranks run (guard)
    curves: int = 0
    guard: bool = False


def _top(k: int) -> Callable[[list[SourceStudy], Any], list[WarmConfig]]:
    """Enqueue each source's best in turns, ``k`` in all (the service's order)."""
    return lambda s, t: warm_start_configs(s, t.search_space, top_k=k)


def _interleaved(sources: list[SourceStudy], task: Any) -> list[Ranked]:
    """Every configuration in warm start's order (each source's next best in turns)."""
    configs = warm_start_configs(sources, task.search_space, top_k=len(task.curves))
    return [Ranked(c.params, i / max(len(configs) - 1, 1)) for i, c in enumerate(configs)]


def _follow(
    *,
    guard: bool,
    order: Callable[[list[SourceStudy], Any], list[Ranked]] | None = None,
    blind_only: bool = False,
) -> Callable[[list[SourceStudy], Any], Sampler]:
    def build(sources: list[SourceStudy], task: Any) -> Sampler:
        ranking = (order or (lambda s, t: consensus_ranking(s, t.search_space)))(sources, task)
        threshold = TRUST_THRESHOLD if guard else -math.inf
        return lambda base, _: TransferSampler(
            base, ranking, threshold=threshold, blind_only=blind_only
        )

    return build


def _service_stack(sources: list[SourceStudy], task: Any, seed: int, *, prior: bool) -> Sampler:
    """A warm-started study's sampler per worker as ``load_study`` builds it (the first batch
    from the ranking), with or without the ranking as TPE's prior."""
    ranking = consensus_ranking(sources, task.search_space)[:RANKING_LIMIT]
    spec: SearchSpec = _search(task, STRATEGIES[DEFAULT])
    spec = spec.model_copy(update={"sampler": spec.sampler.model_copy(update={"seed": seed})})
    return lambda _, worker: TransferSampler(
        build_sampler(spec, seed_offset=worker, prior=ranking if prior else ()),
        ranking,
        blind_only=True,
    )


_SERVICE = Variant(enqueue=_top(TOP_K), ranking=True)
_FORECAST = replace(_SERVICE, setting=FORECAST)

VARIANTS = {
    # the service's warm start on main: each source's best in turns, top 3 enqueued
    "top 3, interleaved": Variant(enqueue=_top(TOP_K)),
    "top 3, consensus": Variant(
        enqueue=lambda s, t: consensus_configs(s, t.search_space, top_k=TOP_K)
    ),
    "top 3 + follow consensus, guard": Variant(
        enqueue=_top(TOP_K),
        sampler=_follow(guard=True),
    ),
    "follow consensus, guard": Variant(sampler=_follow(guard=True)),
    "follow consensus, no guard": Variant(sampler=_follow(guard=False)),
    "follow interleaved, guard": Variant(sampler=_follow(guard=True, order=_interleaved)),
    # W > 1: the trials that start before any result fill up from the ranking, not at random
    "top 3 + first batch, interleaved": Variant(
        enqueue=_top(TOP_K),
        sampler=_follow(guard=True, order=_interleaved, blind_only=True),
    ),
    # the service's warm start now (hpo.core.studies, hpo.core.factory.load_study)
    SERVICE: _SERVICE,
    # the service's before its TPE took the ranking as a prior (hpo.core.prior_tpe)
    f"{SERVICE}, without prior TPE": Variant(
        enqueue=_top(TOP_K),
        seeded_sampler=lambda s, t, seed: _service_stack(s, t, seed, prior=False),
    ),
    # the service's without the enqueued top 3
    "prior TPE alone": Variant(
        seeded_sampler=lambda s, t, seed: _service_stack(s, t, seed, prior=True)
    ),
    # more of the sources' best first
    "top 6 + first batch, consensus": Variant(enqueue=_top(6), ranking=True),
    # the service's warm start under the forecast scheduler: learning from its own curves,
    # and from the sources' curves too
    f"{SERVICE} + forecast": _FORECAST,
    f"{SERVICE} + forecast, source curves": replace(_FORECAST, curves=MAX_SOURCES),
    f"{SERVICE} + forecast, source curves, guard": replace(
        _FORECAST, curves=MAX_SOURCES, guard=True
    ),
    f"{SERVICE} + forecast, 3 nearest sources' curves": replace(_FORECAST, curves=3),
}


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


def _source_curves(task: Any, sim: Simulation) -> list[Curve]:
    """A cold run's finished curves, as its study recorded them (one value per step)."""
    done = [t.params for t in sim.trials if t.state == "complete"]
    return [[(k + 1, v) for k, (_, v) in enumerate(task.curve(p))] for p in done]


def _cost(task: Any, sim: Simulation) -> float:
    return sim.cost_to_reach(task.best_value * (1 + TARGET)) / task.full_grid_cost


def run_set(
    task_set: str, data: Path, *, workers: int, seed: int, variants: Sequence[str]
) -> list[dict[str, Any]]:
    tasks = load_set(task_set, data)
    settings = list(dict.fromkeys([DEFAULT, *(VARIANTS[v].setting for v in variants)]))
    cold = {
        setting: [
            simulate(
                _search(task, STRATEGIES[setting]),
                task,
                workers=workers,
                seed=seed,
                max_cost=MAX_COST * task.full_grid_cost,
            )
            for task in tasks
        ]
        for setting in settings
    }
    rows = []
    for i, task in enumerate(tasks):
        near = nearest_first(i, len(tasks))
        sources = [_source(tasks[j].name, cold[DEFAULT][j]) for j in near]
        row: dict[str, Any] = {
            "set": task_set,
            "workers": workers,
            "seed": seed,
            "task": task.name,
            "cold": _cost(task, cold[DEFAULT][i]),
            "cold_with": {s: _cost(task, cold[s][i]) for s in settings if s != DEFAULT},
            "warm": {},
        }
        for name in variants:
            variant = VARIANTS[name]
            spec = _search(task, STRATEGIES[variant.setting])
            scheduler = None
            if variant.curves:
                assert isinstance(spec.scheduler, ForecastSchedulerSpec)
                scheduler = WarmForecastScheduler(
                    spec.scheduler,
                    [_source_curves(tasks[j], cold[DEFAULT][j]) for j in near[: variant.curves]],
                    guard=variant.guard,
                    minimize=True,
                    size=grid_size(spec.space),
                )
            ranking: list[Ranked] = []
            if variant.ranking:
                names = [f"source-{i}" for i in range(len(sources))]
                spec = spec.model_copy(update={"warm_start": WarmStartSpec(studies=names)})
                ranking = consensus_ranking(sources, task.search_space)[:RANKING_LIMIT]
            sim = simulate(
                spec,
                task,
                workers=workers,
                seed=seed,
                max_cost=MAX_COST * task.full_grid_cost,
                target=task.best_value * (1 + TARGET),
                warm=variant.enqueue(sources, task) if variant.enqueue else (),
                ranking=ranking,
                sampler=(
                    variant.sampler(sources, task)
                    if variant.sampler
                    else variant.seeded_sampler(sources, task, seed)
                    if variant.seeded_sampler
                    else None
                ),
                scheduler=scheduler,
            )
            row["warm"][name] = _cost(task, sim)
        rows.append(row)
    return rows


def best_peer(peers: list[dict[str, Any]], task_set: str, workers: int) -> dict[str, Any] | None:
    """The peer that sets the bar in ``bench.goal`` (the cheapest median cost to 0.1% among
    those reaching it in >= 90% of runs, over every task of the set), from ``peers.json``'s
    rows: the set's own where peers ran on it, else those of ``PEER_SET``'s stand-in."""
    table = {"rows": peers}
    rows = goal.peer_rows(table, task_set, workers) or goal.peer_rows(
        table, PEER_SET.get(task_set, task_set), workers
    )
    best = goal.best_peer(rows)
    if best is None:
        return None
    return {
        "strategy": best["strategy"],
        "set": best["set"],
        "runs": best["runs"],
        **best["cost_to_target"][str(TARGET)],
    }


def summarise(runs: list[dict[str, Any]], peers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    cells = sorted(
        {(r["set"], r["workers"]) for r in runs}, key=lambda c: (SETS.index(c[0]), c[1])
    )
    for task_set, workers in cells:
        cell = [r for r in runs if (r["set"], r["workers"]) == (task_set, workers)]
        peer = best_peer(peers, task_set, workers)
        for name in [v for v in VARIANTS if any(v in r["warm"] for r in cell)]:
            mine = [r for r in cell if name in r["warm"]]  # the seeds it ran
            cold = target_stats([r["cold"] for r in mine])
            setting = VARIANTS[name].setting

            def cold_of(r: dict[str, Any], setting: str = setting) -> float:
                return float(r.get("cold_with", {}).get(setting, r["cold"]))

            warm = target_stats([r["warm"][name] for r in mine])
            same = target_stats([cold_of(r) for r in mine])
            ratios = [
                r["warm"][name] / cold_of(r)
                for r in mine
                if math.isfinite(cold_of(r)) and math.isfinite(r["warm"][name]) and cold_of(r) > 0
            ]
            hurt = []
            for task in dict.fromkeys(r["task"] for r in mine):
                of = [r for r in mine if r["task"] == task]
                c, w = median(cold_of(r) for r in of), median(r["warm"][name] for r in of)
                worse = [r["warm"][name] - cold_of(r) for r in of if r["warm"][name] > cold_of(r)]
                if w > c or worse:
                    hurt.append(
                        {
                            "task": task,
                            "cold": c,
                            "warm": w,
                            "runs_worse": len(worse),
                            "runs": len(of),
                            "most_worse_by": max(worse) if worse else 0.0,
                        }
                    )
            out.append(
                {
                    "set": task_set,
                    "workers": workers,
                    "variant": name,
                    "runs": len(mine),
                    "seeds": sorted({r["seed"] for r in mine}),
                    "setting": setting,
                    "cold": cold,
                    "cold_same": same,
                    "warm": warm,
                    "warm_over_cold_medians": warm["median"] / cold["median"],
                    "warm_over_cold_same_medians": warm["median"] / same["median"],
                    "median_run_ratio": median(ratios) if ratios else None,
                    "runs_at_most_a_third": sum(x <= 1 / 3 for x in ratios),
                    "runs_warm_cost_more": sum(r["warm"][name] > cold_of(r) for r in mine),
                    "warm_over_peer": (
                        warm["median"] / peer["median"] if peer and peer["median"] > 0 else None
                    ),
                    "peer": peer,
                    "hurt": hurt,
                }
            )
    return out


def _cell(stats: dict[str, Any]) -> str:
    return f"{_fmt(stats['median'])} ({stats['reached']:.0%})"


def _ratio(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.2f}"


def markdown(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Warm start, leave one task out",
        "",
        f"Commit `{meta['commit']}`, {meta['machine']}, seeds {meta['seeds']}, peers from "
        f"`peers.json` of commit {meta['peers_commit']}, one process at "
        "nice 10 on a shared host (simulated costs: load-independent). Produced by "
        "`python -m bench.warm_start` (runs) and `--report` (this table; the peer column "
        "re-read from `peers.json`).",
        "",
        "Each task searched cold by the service's default (TPE, 4 startup trials, untried "
        "rule, LoRA prior first), and warm-started from the other tasks' cold runs of the same "
        "seed (nearest tasks first). Cells: median cost to 0.1% of the task's best final "
        "value as a share of its full-grid cost over tasks x seeds (reach). Best peer: the "
        "best peer of `strategies.md`'s goal table (`bench.goal`: the lowest median cold "
        "cost to 0.1% among the peers in `peers.json` on that set and W that reach it in "
        ">= 90% of their runs over every task; for the synthetic family `synthetic-mixed`'s). "
        "Goal (issue 22): warm <= 1/3 of cold. Variants: `top 3, interleaved` enqueues each "
        "source's best in turns (the "
        "service's warm start before this change); `top 3, consensus` enqueues the 3 best by "
        "normalised rank averaged over the sources (weight 1/(i+1) for the i-th nearest); "
        "`follow consensus` proposes the consensus ranking's next untried configuration while "
        "the guard trusts it (rank correlation of the task's finished configurations with "
        "the ranking >= 0 once 4 are known), then the default sampler; `no guard` never stops "
        "trusting; `follow interleaved` follows warm start's interleaved order instead; "
        "`top 3 + follow` enqueues the top 3 first. `top 3 + first batch` enqueues the top 3 "
        "and fills only the trials that start before the task has any result (the rest of "
        "the first batch at W=8; none at W=1) from the ranking, and its TPE (default "
        "sampler) is fitted to every configuration of the ranking as a pseudo-trial valued at "
        "its consensus score (0 best .. 1 worst) beside the task's own results ranked on the "
        "same scale, until 10 own results (`hpo.core.prior_tpe`): "
        f"**`{SERVICE}` is the service's warm start now**. `, without prior TPE` is it with "
        "the plain TPE (the service's before the prior); `prior TPE alone` is the service's "
        "without the enqueued top 3. `top 6` is the service's with 6 of the sources' best "
        "enqueued. `+ forecast` rows run the service's warm start under the `forecast` "
        "scheduler (`tpe + forecast` of `bench.strategies`, first rung at a ninth of "
        "training), learning from the study's own finished curves as today; `, source "
        "curves` also learns from the sources' finished curves (`bench.warm_curves`: a "
        "ridge fit within each source, placed on the study's own level; the nearest 8 "
        "sources, or 3), so no configuration runs unpaused for it to learn; `, guard` only "
        "where every source's early ranks run the same way round as its finals (else its "
        "own curves, as cold). Their own cold "
        "start is `tpe + forecast` searched cold: `cold, same setting` and the ratios after "
        "it (median run ratio, runs <= 1/3, runs costing more, the per-task list below) are "
        "against it; `warm/cold medians` is against the default's cold start. A row's cold "
        "columns are over the seeds it ran. Cold runs go to 1.5x the grid cost (the sources); "
        "warm runs stop at 0.1%.",
        "",
        "| set | W | variant | cold (reach) | warm (reach) | warm/cold medians | cold, same "
        "setting (reach) | warm/cold same setting | median run ratio | runs warm <= 1/3 cold "
        "| runs warm cost more | best peer, cold (reach) | warm/peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        peer = row["peer"]
        peer_cell = f"{peer['strategy']}: {_cell(peer)}" if peer else "-"
        lines.append(
            f"| {row['set']} | {row['workers']} | {row['variant']} | {_cell(row['cold'])} | "
            f"{_cell(row['warm'])} | {_ratio(row['warm_over_cold_medians'])} | "
            f"{_cell(row['cold_same'])} | {_ratio(row['warm_over_cold_same_medians'])} | "
            f"{_ratio(row['median_run_ratio'])} | {row['runs_at_most_a_third']}/{row['runs']} "
            f"| {row['runs_warm_cost_more']}/{row['runs']} | {peer_cell} | "
            f"{_ratio(row['warm_over_peer'])} |"
        )
    lines += [
        "",
        "## Where warm cost more than cold",
        "",
        "Per task: median cold vs warm cost to 0.1% (share of the grid), runs where warm cost "
        "more (same seed), and the largest excess.",
        "",
    ]
    for row in summary:
        hurt = "; ".join(
            f"{h['task']} {_fmt(h['cold'])} vs {_fmt(h['warm'])}, {h['runs_worse']}/{h['runs']} "
            f"runs, up to +{_fmt(h['most_worse_by'])}"
            for h in row["hurt"]
        )
        lines.append(f"- {row['set']}, W={row['workers']}, {row['variant']}: {hurt or 'none'}")
    return "\n".join(lines) + "\n"


def _load_runs() -> list[dict[str, Any]]:
    return json.loads(RUNS.read_text()) if RUNS.exists() else []


def _merge(runs: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``runs`` with ``new`` in: a rerun of a task replaces its cold cost (deterministic) and
    the variants it ran, and keeps the others'."""

    def key(r: dict[str, Any]) -> tuple[str, int, int, str]:
        return r["set"], r["workers"], r["seed"], r["task"]

    merged = {key(r): r for r in runs}
    for r in new:
        old = merged.get(key(r))
        merged[key(r)] = {**r, "warm": {**(old["warm"] if old else {}), **r["warm"]}}
    return list(merged.values())


def report() -> str:
    runs = _load_runs()
    peers = json.loads((RESULTS / "peers.json").read_text())
    summary = summarise(runs, peers["rows"])
    meta = {
        "commit": commit(),
        "machine": machine(),
        "seeds": sorted({r["seed"] for r in runs}),
        "peers_commit": peers.get("meta", {}).get("commit"),
        "service": SERVICE,
    }
    text = markdown(summary, meta)
    save("warm-start", {"meta": meta, "summary": summary}, text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("data", type=Path, nargs="?", help="NMTLC's nmtlc.pkl")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--report", action="store_true", help="only write warm-start.{md,json}")
    args = parser.parse_args()
    if not args.report:
        if args.data is None:
            parser.error("the path of nmtlc.pkl is needed to run")
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        began = time.monotonic()
        for workers in args.workers:
            for task_set in args.sets:
                for seed in args.seeds:
                    new = run_set(
                        task_set, args.data, workers=workers, seed=seed, variants=args.variants
                    )
                    RESULTS.mkdir(exist_ok=True)
                    RUNS.write_text(json.dumps(_merge(_load_runs(), new), indent=1))
                    print(
                        f"{task_set} W={workers} seed {seed}: {time.monotonic() - began:.0f} s",
                        flush=True,
                    )
    print(report())


if __name__ == "__main__":
    main()
