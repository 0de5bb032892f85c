"""Per-trial overhead: our worker vs HF ``Trainer.hyperparameter_search(backend="optuna")``.

    python -m bench.overhead [--trials 10] [--model tiny|small|medium] [--repetitions 3]
        [--threads 1]

Same Llama (79K, 26M or 0.3B parameters, the larger built from a config), same tokenized
data, the same configurations (learning rate, batch size, LoRA rank), CPU. HF re-creates the
model through ``model_init`` every trial (the documented way, and the only way to search the
LoRA rank there); our worker loads the base model once and swaps adapters. Setup = trial
start until the first training step. Writes bench/results/overhead-{model}.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import optuna
import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from bench import ROOT, commit, machine, save
from hpo.core.db import Database
from hpo.core.migrate import upgrade
from hpo.core.settings import Settings
from hpo.core.spec import DatasetSpec, ModelSpec, StudySpec
from hpo.core.storage import make_storage
from hpo.core.studies import create_study
from worker import builtin
from worker.data import DataCache
from worker.loop import Worker
from worker.models import ModelCache

SEQ = 32


@dataclass(frozen=True)
class Size:
    label: str  # parameter count, for the report
    llama: dict[str, int] | None  # LlamaConfig sizes; None = the built-in tiny Llama
    train: int  # training examples per trial (fewer for larger models: CPU time)
    eval: int


SIZES = {
    "tiny": Size("79K", None, 256, 64),
    "small": Size(
        "26M",
        {
            "hidden_size": 512,
            "intermediate_size": 1408,
            "num_hidden_layers": 8,
            "num_attention_heads": 8,
            "num_key_value_heads": 8,
        },
        256,
        64,
    ),
    "medium": Size(
        "0.3B",
        {
            "hidden_size": 1024,
            "intermediate_size": 2816,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
        },
        16,
        16,
    ),
}
CONFIGS = [
    {"learning_rate": lr, "per_device_train_batch_size": bs, "lora_r": r}
    for lr, bs, r in [
        (1e-3, 8, 4),
        (3e-3, 16, 8),
        (1e-4, 8, 16),
        (5e-3, 16, 4),
        (2e-3, 8, 8),
        (1e-3, 16, 16),
        (3e-4, 8, 4),
        (8e-3, 16, 8),
        (5e-4, 8, 16),
        (2e-3, 16, 4),
    ]
]


def build_model(size: str, cache: Path) -> str:
    """The tiny built-in Llama, or a wider and deeper one built from a config."""
    llama = SIZES[size].llama
    if llama is None:
        return str(builtin.resolve("builtin:tiny-llama", cache))
    out = cache / f"{size}-llama"
    if not out.exists():
        builtin.build_llama(out, **llama)
    return str(out)


def ours(workdir: Path, trials: int, model_path: str, size: Size) -> list[dict[str, float]]:
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        database_url=f"sqlite:///{workdir / 'ours.db'}",
        artifact_dir=workdir / "artifacts",
        cache_dir=workdir / "cache",
        model_roots=[workdir.parent],
    )
    upgrade(settings.database_url)
    spec = StudySpec.model_validate(
        {
            "name": "overhead",
            "train": {
                "model": {"name_or_path": model_path},
                "dataset": {
                    "path": "builtin:demo-text",
                    "max_train_examples": size.train,
                    "max_eval_examples": size.eval,
                },
                "training": {"num_train_epochs": 1, "max_seq_length": SEQ},
                "evaluation": {"every_examples": size.train},
            },
            "search": {
                "space": {
                    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
                    "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16]},
                    "lora_r": {"type": "categorical", "choices": [4, 8, 16]},
                },
                "pruner": {"type": "none"},
                "budget": {"max_trials": trials},
            },
        }
    )
    storage = make_storage(settings)
    with Database(settings.database_url) as db, db.session() as session:
        create_study(session, storage, spec=spec, owner="bench", settings=settings)
    study = optuna.load_study(study_name="overhead", storage=storage)
    for config in CONFIGS[:trials]:
        study.enqueue_trial(config)
    Worker(settings, idle_exit=0.5, cpu_threads=torch.get_num_threads()).run(handle_signals=False)
    done = optuna.load_study(study_name="overhead", storage=storage).trials
    return [
        {"setup_s": t.user_attrs["setup_seconds"], "total_s": t.duration.total_seconds()}
        for t in done
        if t.duration is not None
    ]


class _Clock(TrainerCallback):
    def __init__(self) -> None:
        self.trial_start = 0.0
        self.records: list[dict[str, float]] = []

    def on_train_begin(self, *_: Any, **__: Any) -> None:
        self.records.append({"setup_s": time.perf_counter() - self.trial_start})

    def on_train_end(self, *_: Any, **__: Any) -> None:
        self.records[-1]["total_s"] = time.perf_counter() - self.trial_start


def hf(workdir: Path, trials: int, path: str, size: Size) -> list[dict[str, float]]:
    cache = workdir / "cache"
    model_spec = ModelSpec(name_or_path=path)
    data_spec = DatasetSpec(
        path="builtin:demo-text", max_train_examples=size.train, max_eval_examples=size.eval
    )
    tokenizer = ModelCache(device=torch.device("cpu"), cache_dir=cache).get(model_spec).tokenizer
    raw = DataCache(cache).raw(data_spec, model_spec)
    splits = [
        split.map(
            lambda batch: tokenizer(batch["text"], truncation=True, max_length=SEQ),
            batched=True,
            remove_columns=split.column_names,
        )
        for split in (raw.train, raw.eval)
    ]
    clock = _Clock()

    def model_init(trial: optuna.Trial | None) -> torch.nn.Module:
        if trial is None:  # the Trainer's own construction, before any trial
            rank: int = 8
        else:  # transformers calls model_init first in a trial, before hp_space
            clock.trial_start = time.perf_counter()
            rank = int(CONFIGS[trial.suggest_categorical("config", list(range(trials)))]["lora_r"])
        base = AutoModelForCausalLM.from_pretrained(path)
        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=rank,
            lora_alpha=2 * rank,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        )
        return get_peft_model(base, config)

    def hp_space(trial: optuna.Trial) -> dict[str, Any]:
        index = trial.suggest_categorical("config", list(range(trials)))
        config = CONFIGS[index]
        return {
            "learning_rate": config["learning_rate"],
            "per_device_train_batch_size": config["per_device_train_batch_size"],
        }

    args = TrainingArguments(
        output_dir=str(workdir / "hf"),
        num_train_epochs=1,
        eval_strategy="epoch",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        per_device_eval_batch_size=32,
        logging_strategy="no",
    )
    trainer = Trainer(
        model_init=model_init,  # type: ignore[arg-type]  # a PeftModel, which Trainer takes
        args=args,
        train_dataset=splits[0],
        eval_dataset=splits[1],
        callbacks=[clock],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    sampler = optuna.samplers.GridSampler({"config": list(range(trials))})
    trainer.hyperparameter_search(
        hp_space=hp_space, backend="optuna", n_trials=trials, direction="minimize", sampler=sampler
    )
    return clock.records


def _summary(records: list[dict[str, float]]) -> dict[str, float]:
    rest = [r["setup_s"] for r in records[1:]]
    return {
        "trials": len(records),
        "setup_first_s": records[0]["setup_s"],
        "setup_rest_median_s": median(rest),
        "total_s": sum(r["total_s"] for r in records),
    }


def _side(side: str, workdir: Path, trials: int, size: str, threads: int) -> dict[str, float]:
    """One side in a fresh process: neither may inherit the other's warm caches or GC state."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.overhead",
            "--only",
            side,
            "--trials",
            str(trials),
            "--model",
            size,
            "--threads",
            str(threads),
            "--workdir",
            str(workdir / f"{side}-{time.monotonic_ns()}"),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


SIDES = {"ours": "finetune-hpo worker", "hf": "HF hyperparameter_search + model_init"}
KEYS = ("setup_first_s", "setup_rest_median_s", "total_s", "wall_s")


def _markdown(result: dict[str, Any], trials: int, repetitions: int, load: list[float]) -> str:
    medians, model, pairs = result["medians"], result["model"], result["pair_ratios"]
    size = SIZES[model]
    lines = [
        f"# Per-trial overhead ({model} Llama, {size.label} params): finetune-hpo vs HF",
        "",
        f"Commit `{result['commit']}`, {result['machine']}. {trials} configurations, "
        f"{size.train} training examples each, CPU; each side in its own process, "
        f"{repetitions} runs each, alternated; medians over the runs. Setup = trial start "
        f"to first training step. Load average (1 min) over the runs: {min(load):.1f} to "
        f"{max(load):.1f} on a shared machine.",
        "",
        "| | setup, trial 1 (s) | setup, trials 2..N median (s) | sum of trials (s) | wall (s) |",
        "|---|---|---|---|---|",
    ]
    for side, name in SIDES.items():
        r = medians[side]
        lines.append(
            f"| {name} | {r['setup_first_s']:.3f} | {r['setup_rest_median_s']:.3f} | "
            f"{r['total_s']:.2f} | {r['wall_s']:.2f} |"
        )
    lines += [
        "",
        f"Setup after the first trial: ours / HF = {result['setup_ratio_rest']:.3f}; "
        f"sum of trials: ours / HF = {result['total_ratio']:.3f}.",
        "",
        "Each repetition's pair (ours, then HF, back to back), ours / HF: setup "
        + ", ".join(f"{r:.2f}" for r in pairs["setup_rest_median_s"])
        + f" (median {median(pairs['setup_rest_median_s']):.2f}); sum of trials "
        + ", ".join(f"{r:.2f}" for r in pairs["total_s"])
        + f" (median {median(pairs['total_s']):.2f}).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--model", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--repetitions", type=int, default=3, help="runs of each side, alternated")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per side")
    parser.add_argument("--only", choices=("ours", "hf"))
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.only:
        path = build_model(args.model, args.workdir.parent / "models")
        started = time.perf_counter()
        run = ours if args.only == "ours" else hf
        records = run(args.workdir, args.trials, path, SIZES[args.model])
        print(json.dumps({**_summary(records), "wall_s": time.perf_counter() - started}))
        return
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        build_model(args.model, workdir / "models")  # outside the timing
        for _ in range(args.repetitions):
            for side in runs:
                runs[side].append(_side(side, workdir, args.trials, args.model, args.threads))
                load.append(os.getloadavg()[0])
    medians = {side: {k: median(r[k] for r in rs) for k in KEYS} for side, rs in runs.items()}
    o, h = medians["ours"], medians["hf"]
    result: dict[str, Any] = {
        "model": args.model,
        "runs": runs,
        "medians": medians,
        "setup_ratio_rest": o["setup_rest_median_s"] / h["setup_rest_median_s"],
        "total_ratio": o["total_s"] / h["total_s"],
        # each repetition's pair ran back to back: its ratio is less exposed to the load's drift
        "pair_ratios": {
            key: [a[key] / b[key] for a, b in zip(runs["ours"], runs["hf"], strict=True)]
            for key in ("setup_rest_median_s", "total_s")
        },
        "loadavg_1min": load,
        "commit": commit(),
        "machine": machine(f"torch {torch.__version__}", f"{args.threads} threads"),
    }
    text = _markdown(result, args.trials, args.repetitions, load)
    save(f"overhead-{args.model}", result, text)
    print(text)


if __name__ == "__main__":
    main()
