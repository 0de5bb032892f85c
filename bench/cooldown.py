"""WSD cool-down scoring: do rung scores rank like final scores better after a short decay?

    python -m bench.cooldown [--model models/smollm2] [--configs 12] [--seed 0]

Each configuration (learning rate, LoRA rank, weight decay drawn at random) trains with
``warmup_stable_decay`` through the worker's own path (``worker.training.train_trial``),
pausing at each rung of the stable phase as a scheduled trial does and continuing from the
saved state. At each rung three numbers: the score there (what a paused trial reports), the
score after a *cool-down branch* from that rung's checkpoint (the same WSD schedule on a run
of rung + rung/4 steps, so it decays over its last 20%; the main run continues from the
stable checkpoint, not the cooled one), and the final score. Spearman's rho between rung
and final scores, with and without the cool-down, per rung. Writes
bench/results/cooldown.{md,json}.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from bench import ROOT, commit, machine, save
from hpo.core.schedulers.adaptive import fisher_lower_bound, spearman
from hpo.core.spec import StudySpec
from worker.continuation import Paused, Resume, cooled_score
from worker.data import DataCache
from worker.models import ModelCache
from worker.trainer import trial_hparams
from worker.training import TrialHooks, train_trial

RUNGS = (64, 128)  # examples; the full run has 256 and decays over its last 51
BATCH = 8


def study_spec(model: str) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": "cooldown",
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
                    "per_device_train_batch_size": BATCH,
                    "max_seq_length": 48,
                    "lr_scheduler_type": "warmup_stable_decay",
                    "warmup_ratio": 0.0,
                },
                "evaluation": {"every_examples": 64},
                "report_to": [],
            },
            "search": {
                "space": {
                    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
                    "lora_r": {"type": "categorical", "choices": [4, 16]},
                    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
                }
            },
        }
    )


def draw(rng: random.Random) -> dict[str, Any]:
    return {
        "learning_rate": math.exp(rng.uniform(math.log(1e-5), math.log(1e-2))),
        "lora_r": rng.choice([4, 16]),
        "weight_decay": rng.uniform(0.0, 0.1),
    }


class Runner:
    """Runs segments of one configuration on the cached model and data, keeping checkpoints."""

    def __init__(self, spec: StudySpec, workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.device = torch.device("cpu")
        self.models = ModelCache(device=self.device, cache_dir=workdir / "cache")
        self.data = DataCache(workdir / "cache")
        self.raw = self.data.raw(spec.train.dataset, spec.train.model)
        self.loaded = self.models.get(spec.train.model)

    def segment(
        self, settings: dict[str, Any], *, until: int | None, resume: Resume | None, keep: Path
    ) -> tuple[dict[int, float], float | None, float]:
        """Train one segment; its reports, its value when it ran to the end, and seconds."""
        trial = optuna.create_study().ask()

        def keep_checkpoint(folder: Path) -> None:
            shutil.copytree(folder, keep)

        started = time.perf_counter()
        try:
            result = train_trial(
                trial,
                spec=self.spec,
                hparams=settings,
                loaded=self.loaded,
                raw=self.raw,
                cache=self.data,
                device=self.device,
                stop=threading.Event(),
                hooks=TrialHooks(keep_checkpoint=keep_checkpoint),
                until=until,
                resume=resume,
            )
            value: float | None = result.value
        except Paused:
            value = None
        reported = trial.study.trials[-1].intermediate_values
        return dict(reported), value, time.perf_counter() - started

    def cooled(
        self, settings: dict[str, Any], checkpoint: Path, reported: dict[int, float]
    ) -> float | None:
        """The worker's own cool-down branch (``cooldown`` on a scheduler)."""
        train = functools.partial(
            train_trial,
            spec=self.spec,
            loaded=self.loaded,
            raw=self.raw,
            cache=self.data,
            device=self.device,
            stop=threading.Event(),
        )
        return cooled_score(
            train,
            direction=self.spec.search.objective.direction,
            hparams=settings,
            checkpoint=checkpoint,
            reported=reported,
        )


def measure(runner: Runner, params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    settings = trial_hparams(runner.spec, params)
    out: dict[str, Any] = {"params": params, "rung": {}, "cooled": {}, "seconds": 0.0}
    resume = None
    for until in (*RUNGS, None):
        keep = workdir / f"rung{until}"
        reported, value, seconds = runner.segment(settings, until=until, resume=resume, keep=keep)
        out["seconds"] += seconds
        if until is None:
            out["final"] = value
            break
        out["rung"][until] = reported[until]
        resume = Resume(keep, reported, None)
        started = time.perf_counter()
        out["cooled"][until] = runner.cooled(settings, keep, reported)
        out["seconds"] += time.perf_counter() - started
    return out


def agreement(rows: list[dict[str, Any]], key: str, rung: int) -> dict[str, Any]:
    finals = [r["final"] for r in rows]
    scores = [r[key][rung] for r in rows]
    rho = spearman(scores, finals)
    lower = fisher_lower_bound(rho, len(rows)) if rho is not None and len(rows) > 3 else None
    return {"rho": rho, "lower95": lower, "n": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models/smollm2"))
    parser.add_argument("--configs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = study_spec(args.model)
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpo-cooldown-") as tmp:
        runner = Runner(spec, Path(tmp))
        for i in range(args.configs):
            row = measure(runner, draw(rng), Path(tmp) / f"config{i}")
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = {
        rung: {"plain": agreement(rows, "rung", rung), "cooled": agreement(rows, "cooled", rung)}
        for rung in RUNGS
    }
    revision, host = commit(), machine(f"torch {torch.__version__}", f"{args.threads} threads")
    lines = [
        "# WSD cool-down scoring: rank agreement of rung scores with final scores",
        "",
        f"Commit `{revision}`, {host}. {args.configs} configurations (seed {args.seed}) of "
        f"LoRA on `{Path(args.model).name}`, `warmup_stable_decay`, 256 training examples "
        "(decay over the last 51), eval_loss on 40 held-out examples. Cool-down: a branch "
        "from the rung's stable-phase checkpoint that decays over rung/4 more steps.",
        "",
        "| rung (examples) | Spearman rho, rung score | lower 95% | with cool-down | lower 95% |",
        "|---|---|---|---|---|",
    ]
    for rung, row in table.items():
        plain, cooled = row["plain"], row["cooled"]
        lines.append(
            f"| {rung} | {_f(plain['rho'])} | {_f(plain['lower95'])} | "
            f"{_f(cooled['rho'])} | {_f(cooled['lower95'])} |"
        )
    seconds = sum(r["seconds"] for r in rows)
    lines += [
        "",
        f"Device time: {seconds:.0f} s in all ({seconds / len(rows):.0f} s per "
        "configuration, cool-down branches included).",
    ]
    result = {
        "commit": revision,
        "machine": host,
        "model": args.model,
        "seed": args.seed,
        "configs": rows,
        "agreement": table,
    }
    save("cooldown", result, "\n".join(lines) + "\n")
    print("\n".join(lines))


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
