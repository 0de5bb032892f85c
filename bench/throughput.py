"""Throughput of one LoRA trial: the worker's training path vs plain HF ``Trainer`` defaults.

    python -m bench.throughput [--model 1b|tiny] [--steps 40] [--batch 8] [--seq-len 1024]

Builds a Llama from a config (random init, no download; ``1b`` is TinyLlama-1.1B's shape) and
synthetic token sequences of varied, realistic lengths, then trains one LoRA adapter over the
same examples twice, each in a fresh copy of the model:

- ours: ``worker.training.train_trial``, the worker's own path (bf16 weights and autocast
  where supported, SDPA attention, fused AdamW, length-grouped batches, evaluation on a
  32-example subset four times per trial, each result reported to an Optuna trial);
- plain: ``Trainer`` with ``TrainingArguments`` defaults (fp32 weights, random batches), the
  same LoRA config and collator, no evaluation.

Reports useful (non-padding) tokens/s, achieved TFLOP/s and MFU against the GPU's dense bf16
peak, and where the time went. On CPU it runs, slowly, with ``--model tiny``. Writes
bench/results/throughput-{model}-{device}.{md,json}.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import optuna
import torch
from peft import get_peft_model
from transformers import (
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from bench import commit, save
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from worker import builtin
from worker.data import DataCache, Splits
from worker.models import LoadedModel, resolve_dtype
from worker.trainer import lora_config, trial_hparams
from worker.training import TrialHooks, train_trial

SHAPES: dict[str, dict[str, Any]] = {
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
    },
    "tiny": {
        "hidden_size": 128,
        "intermediate_size": 344,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 32000,
    },
}
# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, by a substring of the device name.
PEAKS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}
LORA = {"lora_r": 16, "lora_target_modules": "all-linear", "learning_rate": 2e-4}


class PhaseTimer(TrainerCallback):
    """Splits a training run into optimizer steps, the gaps between them (data loading and
    callbacks) and evaluations, from the Trainer's own callback points."""

    def __init__(self) -> None:
        self.seconds = {"forward/backward/optimizer": 0.0, "data loading": 0.0, "evaluation": 0.0}
        self._mark = 0.0
        self._eval_in_gap = 0.0

    def on_train_begin(self, *_: Any, **__: Any) -> None:
        self._mark = time.perf_counter()

    def on_step_begin(self, *_: Any, **__: Any) -> None:
        now = time.perf_counter()
        self.seconds["data loading"] += now - self._mark - self._eval_in_gap
        self._eval_in_gap = 0.0
        self._mark = now

    def on_step_end(self, *_: Any, **__: Any) -> None:
        now = time.perf_counter()
        self.seconds["forward/backward/optimizer"] += now - self._mark
        self._mark = now

    def on_evaluate(self, *_: Any, **__: Any) -> None:
        spent = time.perf_counter() - self._mark - self._eval_in_gap
        self.seconds["evaluation"] += spent
        self._eval_in_gap += spent


def _lengths(n: int, seq_len: int, rng: np.random.Generator) -> list[int]:
    """Instruction-tuning-like lengths: log-normal around a third of the context, clipped."""
    raw = rng.lognormal(mean=math.log(seq_len / 3), sigma=0.6, size=n)
    return [int(x) for x in np.clip(raw, 16, seq_len)]


def _dataset(lengths: list[int], vocab: int, rng: np.random.Generator) -> datasets.Dataset:
    ids = [rng.integers(3, vocab, size=n).tolist() for n in lengths]
    return datasets.Dataset.from_dict(
        {"input_ids": ids, "attention_mask": [[1] * n for n in lengths]}
    )


def _model(shape: str, seq_len: int, dtype: torch.dtype, device: torch.device) -> LlamaForCausalLM:
    config = LlamaConfig(
        **SHAPES[shape], max_position_embeddings=seq_len, tie_word_embeddings=False
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.to(device=device, dtype=dtype)  # type: ignore[call-arg]  # transformers' stub misreads .to
    return model


def _model_flops(model: LlamaForCausalLM, lengths: list[int], lora_params: int) -> float:
    """Training FLOPs of one pass over ``lengths``, padding excluded (the MFU convention):
    frozen matmuls 4N per token (forward, and backward to activations), trained LoRA
    weights 6 per parameter, causal attention 6·layers·hidden·length per token."""
    cfg = model.config
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    per_token = 4 * matmul + 6 * lora_params
    attention = sum(6 * cfg.num_hidden_layers * cfg.hidden_size * n * n for n in lengths)
    return per_token * sum(lengths) + attention


def _peak(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name(device)
    return name, next((p for key, p in PEAKS.items() if key in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(
    args: argparse.Namespace, splits: Splits, tokenizer: Any, device: torch.device
) -> dict[str, Any]:
    n_train = len(splits.train)
    spec = StudySpec.model_validate(
        {
            "name": "throughput",
            "train": {
                "model": {"name_or_path": "builtin:tiny-llama"},
                "dataset": {"path": "builtin:demo-text"},
                "evaluation": {"every_examples": max(1, n_train // 4)},
                "training": {"max_seq_length": args.seq_len},
            },
        }
    )
    dtype = resolve_dtype(spec.train.model, device)
    loaded = LoadedModel(_model(args.model, args.seq_len, dtype, device), tokenizer, "synthetic")
    settings = trial_hparams(spec, {**LORA, "per_device_train_batch_size": args.batch})
    trial = optuna.create_study().ask()
    reporting = [0.0]
    for name in ("report", "should_prune"):
        call = getattr(trial, name)

        def timed(*a: Any, _call: Any = call, **k: Any) -> Any:
            started = time.perf_counter()
            try:
                return _call(*a, **k)
            finally:
                reporting[0] += time.perf_counter() - started

        setattr(trial, name, timed)
    timer = PhaseTimer()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        train_trial(
            trial,
            spec=spec,
            hparams=settings,
            loaded=loaded,
            raw=splits,
            cache=DataCache(Path(cache)),
            device=device,
            stop=threading.Event(),
            hooks=TrialHooks(extra_callbacks=[timer]),
        )
    _sync(device)
    wall = time.perf_counter() - started
    timer.seconds["evaluation"] -= reporting[0]
    timer.seconds["reporting"] = reporting[0]
    lora_params = _lora_params(loaded.model, settings, loaded)
    return {
        "wall_s": wall,
        "split_s": timer.seconds,
        "dtype": str(dtype),
        "model": loaded.model,
        "lora_params": lora_params,
    }


def _lora_params(model: torch.nn.Module, settings: dict[str, Any], loaded: LoadedModel) -> int:
    peft = get_peft_model(model, lora_config(settings, loaded, "causal-lm"))
    count = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    peft.unload()
    return count


def run_plain(
    args: argparse.Namespace, splits: Splits, tokenizer: Any, device: torch.device, out_dir: str
) -> dict[str, Any]:
    model = _model(args.model, args.seq_len, torch.float32, device)
    loaded = LoadedModel(model, tokenizer, "synthetic")
    settings = trial_hparams(
        StudySpec.model_validate(
            {
                "name": "throughput",
                "train": {
                    "model": {"name_or_path": "builtin:tiny-llama"},
                    "dataset": {"path": "builtin:demo-text"},
                },
            }
        ),
        LORA,
    )
    peft = get_peft_model(model, lora_config(settings, loaded, "causal-lm"))
    timer = PhaseTimer()
    trainer = Trainer(
        model=peft,
        args=TrainingArguments(
            output_dir=out_dir,
            per_device_train_batch_size=args.batch,
            num_train_epochs=1,
            learning_rate=2e-4,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            use_cpu=device.type != "cuda",
        ),
        train_dataset=splits.train,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    trainer.train()
    _sync(device)
    wall = time.perf_counter() - started
    peft.unload()
    return {"wall_s": wall, "split_s": timer.seconds, "dtype": "torch.float32", "model": model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    lengths = _lengths(args.steps * args.batch, args.seq_len, rng)
    vocab = SHAPES[args.model]["vocab_size"]
    tokenizer = AutoTokenizer.from_pretrained(
        builtin.resolve("builtin:tiny-llama", Settings().cache_dir)
    )
    # Already tokenized: TRL's preparation leaves input_ids as they are.
    splits = Splits(
        _dataset(lengths, vocab, rng),
        _dataset(_lengths(32, args.seq_len, rng), vocab, rng),
        None,
        "language_modeling",
        train_lengths=lengths,
    )
    device_name, peak = _peak(device)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for side in ("ours", "plain"):
            result = (
                run_ours(args, splits, tokenizer, device)
                if side == "ours"
                else run_plain(args, splits, tokenizer, device, out_dir)
            )
            model = result.pop("model")
            lora = int(result.pop("lora_params", None) or rows["ours"]["lora_params"])
            flops = _model_flops(model, lengths, lora)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows[side] = {
                **result,
                "lora_params": lora,
                "useful_tokens": sum(lengths),
                "tokens_per_s": sum(lengths) / result["wall_s"],
                "tflops": flops / result["wall_s"] / 1e12,
                "mfu": flops / result["wall_s"] / peak if peak else None,
            }
    rows["ours"]["speedup_vs_plain"] = rows["plain"]["wall_s"] / rows["ours"]["wall_s"]
    meta = {
        "commit": commit(),
        "device": device_name,
        "peak_bf16_flops": peak,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        **vars(args),
    }
    save(
        f"throughput-{args.model}-{device.type}",
        {"meta": meta, "rows": rows},
        _markdown(rows, meta),
    )
    print(_markdown(rows, meta))


def _markdown(rows: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    flops = meta["peak_bf16_flops"]
    peak = f"{flops / 1e12:.0f} TFLOP/s" if flops else "n/a (no GPU)"
    lines = [
        f"# One LoRA trial: throughput ({meta['model']} Llama, {meta['device']})",
        "",
        f"Commit `{meta['commit']}`, torch {meta['torch']}, {meta['cpus']} CPUs; "
        f"{meta['steps']} steps x batch {meta['batch']}, lengths up to {meta['seq_len']} "
        f"(log-normal), LoRA r=16 on all linear layers. Peak used for MFU: "
        f"{peak}.",
        "",
        "| side | weights | wall s | useful tokens/s | TFLOP/s | MFU | fwd/bwd/opt s | data s "
        "| eval s | reporting s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for side, r in rows.items():
        s = r["split_s"]
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        lines.append(
            f"| {side} | {r['dtype'].removeprefix('torch.')} | {r['wall_s']:.1f} | "
            f"{r['tokens_per_s']:.0f} | {r['tflops']:.3f} | {mfu} | "
            f"{s['forward/backward/optimizer']:.1f} | {s['data loading']:.2f} | "
            f"{s['evaluation']:.2f} | {s.get('reporting', 0.0):.3f} |"
        )
    lines += [
        "",
        f"ours vs plain: {rows['ours']['speedup_vs_plain']:.2f}x wall time "
        "(ours also evaluates four times).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
