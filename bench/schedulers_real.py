"""Schedulers on real fine-tunes: no pausing (the default), ASHA and top-k with promotion, PBT.

    python -m bench.schedulers_real [--model models/smollm2] [--seeds 1 2] [--trainings 6]
                                    [--strategies default asha top_k pbt] [--threads 2]
    python -m bench.schedulers_real --merge A.json B.json   # seeds run by separate processes

Each strategy runs as a study on a real worker (in this process, CPU) against its own
PostgreSQL, on LoRA fine-tunes of a real pretrained checkpoint, with the same budget in full
trainings: the default trains ``trainings`` configurations to their end; ASHA (rungs at
64/128/256 examples, eta 2) and top-k (scored at 64, the 2 best continue) start twice as
many and pause them; PBT trains a population of ``trainings`` members in intervals of 64
examples. Recorded curves cannot replay PBT (its hyperparameters change mid-run), so this
is where it is measured. Cost is counted twice: in training examples (what the
segments trained; independent of machine load, like the simulator's modelled cost) and in
device seconds summed over segments. Best-so-far is over configurations trained to their
end. Writes bench/results/schedulers-real.{md,json} after each seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from bench import ROOT, commit, machine, save
from hpo.core.migrate import upgrade
from hpo.core.records import DEVICE_SECONDS_ATTR, EXAMPLES_TRAINED_ATTR
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from hpo.core.storage import make_storage
from hpo.core.studies import create_study
from tests.pg import PostgresCluster
from worker.loop import Worker

MARKS = (0.01, 0.001)
COSTS = ("examples", "seconds")


def strategies(trainings: int) -> dict[str, dict[str, Any]]:
    """``search`` overrides per strategy, each costing about ``trainings`` full trainings."""
    return {
        "default": {"budget": {"max_trials": trainings}},
        "asha": {
            "scheduler": {"type": "asha", "min_steps": 64, "reduction_factor": 2},
            "budget": {"max_trials": 2 * trainings},
        },
        "top_k": {
            "scheduler": {"type": "top_k", "at_steps": 64, "k": 2, "min_scored": 4},
            "budget": {"max_trials": 2 * trainings},
        },
        "pbt": {
            "scheduler": {
                "type": "pbt",
                "population_size": trainings,
                "interval_steps": 64,
                "quantile": 0.25,
            },
            "budget": {"max_trials": trainings},
        },
    }


def study_spec(name: str, model: str, seed: int, search: dict[str, Any]) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": name,
            "train": {
                "model": {"name_or_path": model},
                "dataset": {
                    "path": str(ROOT / "examples/data/arithmetic.jsonl"),
                    "validation_fraction": 0.2,
                    "max_train_examples": 256,
                    "max_eval_examples": 40,
                },
                "training": {
                    "num_train_epochs": 1,
                    "per_device_train_batch_size": 8,
                    "max_seq_length": 48,
                },
                "evaluation": {"every_examples": 64},
                "report_to": [],
            },
            "search": {
                "space": {
                    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
                    "lora_r": {"type": "categorical", "choices": [4, 16]},
                    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
                    "lora_dropout": {"type": "float", "low": 0.0, "high": 0.2},
                },
                "sampler": {"type": "tpe", "seed": seed, "n_startup_trials": 3},
                **search,
            },
        }
    )


def run_study(settings: Settings, spec: StudySpec, threads: int) -> list[dict[str, Any]]:
    """Register ``spec``, let one worker run it to the end; its segments in the order they
    ended, with the examples they trained and their device seconds."""
    storage = make_storage(settings)
    with Session(storage.engine) as session:
        create_study(session, storage, spec=spec, owner="bench", settings=settings)
        session.commit()
    Worker(
        settings, studies=[spec.name], idle_exit=2.0, poll_interval=0.2, cpu_threads=threads
    ).run(handle_signals=False)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    segments = [t for t in study.get_trials() if t.datetime_complete is not None]
    segments.sort(key=lambda t: t.datetime_complete)  # type: ignore[arg-type, return-value]
    storage.engine.dispose()
    return [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "params": t.params,
            "seconds": t.user_attrs.get(DEVICE_SECONDS_ATTR, 0.0),
            "examples": t.user_attrs.get(EXAMPLES_TRAINED_ATTR, 0),
            "complete": t.state == TrialState.COMPLETE,
        }
        for t in segments
    ]


def reach(segments: list[dict[str, Any]], target: float, cost: str) -> float | None:
    """``cost`` (examples or seconds) spent when a configuration trained to its end first got
    to ``target``."""
    spent = 0.0
    for s in segments:
        spent += s[cost]
        if s["complete"] and s["value"] is not None and s["value"] <= target:
            return spent
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models/smollm2"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--trainings", type=int, default=6)
    parser.add_argument("--strategies", nargs="+", default=["default", "asha", "top_k", "pbt"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="write the table from these results files' runs instead",
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.merge)
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    chosen = {k: v for k, v in strategies(args.trainings).items() if k in args.strategies}
    cluster = PostgresCluster()
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="hpo-sched-") as tmp:
            url = cluster.url()
            upgrade(url)
            settings = Settings(
                database_url=url,
                artifact_dir=Path(tmp) / "artifacts",
                cache_dir=Path(tmp) / "cache",
            )
            for seed in args.seeds:
                for name, search in chosen.items():
                    spec = study_spec(f"{name}-{seed}", args.model, seed, search)
                    segments = run_study(settings, spec, args.threads)
                    runs.append({"strategy": name, "seed": seed, "segments": segments})
                    print(
                        json.dumps(
                            {
                                "strategy": name,
                                "seed": seed,
                                "examples": sum(s["examples"] for s in segments),
                                "seconds": sum(s["seconds"] for s in segments),
                            }
                        ),
                        flush=True,
                    )
                write(
                    runs,
                    args.strategies,
                    args.trainings,
                    args.model,
                    commit(),
                    machine(f"torch {torch.__version__}", f"{args.threads} threads"),
                )
    finally:
        cluster.stop()


def merge(files: list[Path]) -> None:
    """One table from results files of the same commit, machine and settings."""
    parts = [json.loads(f.read_text()) for f in files]
    for key in ("commit", "machine", "trainings"):
        if len({json.dumps(p[key]) for p in parts}) > 1:
            raise SystemExit(f"cannot merge: the files differ in {key}")
    if len({Path(p["model"]).name for p in parts}) > 1:  # copies of one checkpoint may move
        raise SystemExit("cannot merge: the files used different models")
    first, runs = parts[0], [run for p in parts for run in p["runs"]]
    names = list(dict.fromkeys(run["strategy"] for run in runs))
    write(runs, names, first["trainings"], first["model"], first["commit"], first["machine"])


def write(
    runs: list[dict[str, Any]],
    strategies: list[str],
    trainings: int,
    model: str,
    revision: str,
    host: str,
) -> None:
    finals = [s["value"] for r in runs for s in r["segments"] if s["complete"]]
    best = min(finals)
    rows = []
    for name in strategies:
        mine = [r for r in runs if r["strategy"] == name]
        if not mine:
            continue
        bests = [
            min((s["value"] for s in r["segments"] if s["complete"]), default=None) for r in mine
        ]
        row: dict[str, Any] = {"strategy": name, "runs": len(mine), "bests": bests}
        for cost in COSTS:
            row[f"median_{cost}"] = statistics.median(
                sum(s[cost] for s in r["segments"]) for r in mine
            )
            for mark in MARKS:
                row[f"to_{mark}_{cost}"] = [
                    reach(r["segments"], best * (1 + mark), cost) for r in mine
                ]
        rows.append(row)
    seeds = sorted({r["seed"] for r in runs})
    lines = [
        "# Schedulers on real LoRA fine-tunes (CPU)",
        "",
        f"Commit `{revision}`, {host}. `{Path(model).name}`, 256 training examples of "
        f"`examples/data/arithmetic.jsonl`, eval_loss on 40 held out; seeds {seeds}; "
        f"budget about {trainings} full trainings per run; best known final eval_loss "
        f"{best:.4f} (over every run).",
        "",
        "Cost in training examples (load-independent) and device seconds (this machine, "
        "which may have been busy). Cells 'within x%': runs that got there, then the cost per "
        "run ('never' = not within its budget).",
        "",
        "| strategy | examples per run (median) | device s per run (median) | best final loss "
        "per seed | within 1%: examples | within 0.1%: examples | within 0.1%: device s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        per_seed = ", ".join(f"{b:.4f}" if b is not None else "none" for b in row["bests"])
        cells = [
            _reached(row[f"to_{mark}_{cost}"])
            for mark, cost in ((0.01, "examples"), (0.001, "examples"), (0.001, "seconds"))
        ]
        head = f"| {row['strategy']} | {row['median_examples']:.0f} | {row['median_seconds']:.0f}"
        lines.append(f"{head} | {per_seed} | " + " | ".join(cells) + " |")
    data = {
        "commit": revision,
        "machine": host,
        "model": model,
        "seeds": seeds,
        "trainings": trainings,
        "best_known": best,
        "rows": rows,
        "runs": runs,
    }
    save("schedulers-real", data, "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def _reached(costs: list[float | None]) -> str:
    got = sum(c is not None for c in costs)
    return f"{got}/{len(costs)}: " + ", ".join("never" if c is None else f"{c:.0f}" for c in costs)


if __name__ == "__main__":
    main()
