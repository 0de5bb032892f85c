"""What a spec may allocate (hpo.core.estimate): each limit names the fields that drive it,
at the worst point of the search space, with the estimate and the limit."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hpo.core.estimate import BUILTIN_SHAPES, GB, Limits, ModelShape, Worst, memory, problems
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from tests.specs import minimal_spec
from worker import builtin

LIMITS = Limits.from_settings(Settings())
TINY = BUILTIN_SHAPES["builtin:tiny-llama"]
# Llama 3 8B's config.json, the sizes that matter.
LLAMA_8B = {
    "model_type": "llama",
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
GENERATES = {"objective": {"metric": "exact_match"}}


def _spec(**parts: Any) -> StudySpec:
    return StudySpec.model_validate(minimal_spec("estimate", **parts))


def _named(found: list[Any]) -> dict[str, set[tuple[str, ...]]]:
    """The fields each setting's problems name."""
    named: dict[str, set[tuple[str, ...]]] = {}
    for problem in found:
        named.setdefault(problem.setting, set()).update(problem.fields)
    return named


def test_the_defaults_pass_on_the_tiny_model_and_an_8b_model_at_batch_1() -> None:
    assert problems(_spec(), TINY, LIMITS) == []
    shape = ModelShape.from_config(LLAMA_8B)
    assert shape is not None
    space = {"per_device_train_batch_size": {"type": "categorical", "choices": [1]}}
    spec = _spec(space=space, training={"max_seq_length": 512}, evaluation={"batch_size": 1})
    peak = memory(spec, shape).peak / GB
    assert 15 < peak < 24, peak  # 15 GB of bf16 weights, then LoRA's few GB
    assert problems(spec, shape, LIMITS) == []


@pytest.mark.parametrize(
    ("parts", "setting", "fields"),
    [
        (
            {
                "space": {"per_device_train_batch_size": {"type": "int", "low": 8, "high": 4096}},
                "training": {"max_seq_length": 512},
            },
            "HPO_MAX_BATCH_TOKENS",
            {
                ("search", "space", "per_device_train_batch_size"),
                ("train", "training", "max_seq_length"),
                ("train", "evaluation", "batch_size"),  # its default: the training batch
            },
        ),
        (
            {"training": {"max_seq_length": 131072}, "evaluation": {"batch_size": 16}},
            "HPO_MAX_BATCH_TOKENS",
            {
                ("search", "space", "per_device_train_batch_size"),
                ("train", "training", "max_seq_length"),
                ("train", "evaluation", "batch_size"),
            },
        ),
        (
            {"evaluation": {"batch_size": 4096}, "training": {"max_seq_length": 1024}},
            "HPO_MAX_BATCH_TOKENS",
            {("train", "evaluation", "batch_size"), ("train", "training", "max_seq_length")},
        ),
        (
            {"training": {"gradient_accumulation_steps": 1024, "max_seq_length": 4096}},
            "HPO_MAX_STEP_TOKENS",
            {
                ("search", "space", "per_device_train_batch_size"),
                ("train", "training", "gradient_accumulation_steps"),
                ("train", "training", "max_seq_length"),
            },
        ),
        (
            {**GENERATES, "training": {"max_new_tokens": 4096, "num_beams": 16}},
            "HPO_MAX_GENERATED_TOKENS",
            {
                ("train", "evaluation", "generation", "max_examples"),
                ("train", "training", "max_new_tokens"),
                ("train", "training", "num_beams"),
            },
        ),
        (
            {
                **GENERATES,
                "evaluation": {
                    "every_examples": 1,
                    "generation": {"max_examples": 10000, "report_examples": 10000},
                },
            },
            "HPO_MAX_GENERATED_TOKENS_PER_EXAMPLE",
            {
                ("train", "evaluation", "generation", "report_examples"),
                ("train", "evaluation", "every_examples"),
                ("train", "training", "max_new_tokens"),
                ("train", "training", "num_beams"),
            },
        ),
    ],
    ids=["batch", "seq", "eval-batch", "accumulation", "beams", "reports"],
)
def test_each_cap_names_its_fields_whatever_the_model(
    parts: dict[str, Any], setting: str, fields: set[tuple[str, ...]]
) -> None:
    """The caps hold without a model shape (a hub id registration cannot read)."""
    found = [p for p in problems(_spec(**parts), None, LIMITS) if p.setting == setting]
    assert found, problems(_spec(**parts), None, LIMITS)
    assert _named(found)[setting] == fields
    for problem in found:
        assert problem.estimate > problem.limit
        assert setting in problem.message and "train." in problem.message


def test_memory_names_the_phase_fields_with_the_estimate_and_the_limit() -> None:
    """The issue's bomb, batch 512 x 131072 tokens, on the tiny model: past every cap and
    hundreds of GB past the worker's memory; the training phase names batch, length, rank."""
    space = {"per_device_train_batch_size": {"type": "categorical", "choices": [8, 512]}}
    spec = _spec(space=space, training={"max_seq_length": 131072})
    found = problems(spec, TINY, LIMITS)
    (training,) = [p for p in found if "in training" in p.what]
    assert training.setting == "HPO_WORKER_MEMORY_GB" and training.unit == "GB"
    assert set(training.fields) == {
        ("search", "space", "per_device_train_batch_size"),
        ("train", "training", "max_seq_length"),
        ("train", "training", "lora_r"),
    }
    assert training.estimate > 100 and training.limit == 24
    assert "GB" in training.message and "HPO_WORKER_MEMORY_GB = 24" in training.message


def test_the_adapter_rank_counts_and_weights_alone_name_the_model() -> None:
    shape = ModelShape.from_config(LLAMA_8B)
    assert shape is not None
    one = {"per_device_train_batch_size": {"type": "categorical", "choices": [1]}}
    small = _spec(space=one, training={"lora_r": 8, "lora_target_modules": "all-linear"})
    large = _spec(space=one, training={"lora_r": 1024, "lora_target_modules": "all-linear"})
    grown = memory(large, shape).training - memory(small, shape).training
    assert grown > 10 * GB  # 1016 more ranks x 32 layers x all linear modules x 16 bytes
    tight = replace(LIMITS, memory_bytes=int(memory(small, shape).peak + GB))
    assert problems(small, shape, tight) == []
    (past,) = [p for p in problems(large, shape, tight) if "in training" in p.what]
    assert ("train", "training", "lora_r") in past.fields
    (weights,) = problems(small, shape, replace(LIMITS, memory_bytes=GB))
    assert weights.fields == (("train", "model", "name_or_path"), ("train", "model", "dtype"))


def test_the_worst_point_of_the_space_and_checkpointing() -> None:
    space = {
        "per_device_train_batch_size": {"type": "int", "low": 2, "high": 64, "step": 2},
        "lora_target_modules": {"type": "categorical", "choices": ["attention", "all-linear"]},
    }
    worst = Worst.of(_spec(space=space))
    assert worst.number("per_device_train_batch_size") == 64
    assert worst.possible["lora_target_modules"] == ["attention", "all-linear"]
    assert worst.number("num_beams") == 1  # unset: generate's default
    plain = memory(_spec(space=space), TINY)
    checkpointed = memory(_spec(space=space, training={"gradient_checkpointing": True}), TINY)
    assert checkpointed.training < plain.training
    doubled = {**space, "per_device_train_batch_size": {"type": "categorical", "choices": [128]}}
    assert memory(_spec(space=doubled), TINY).training > 1.9 * plain.training


def test_model_shapes_from_configs() -> None:
    gpt2 = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257}
    assert ModelShape.from_config(gpt2) == ModelShape(12, 768, 50257, 12, 12, 3072)
    nested = {"model_type": "gemma3", "text_config": {**LLAMA_8B}}
    assert ModelShape.from_config(nested) == ModelShape.from_config(LLAMA_8B)
    assert ModelShape.from_config({"model_type": "x", "hidden_size": 8}) is None
    assert ModelShape.from_config({**gpt2, "n_layer": True}) is None  # not a size


def test_builtin_shapes_are_the_models_the_workers_build(tmp_path: Path) -> None:
    for name, shape in BUILTIN_SHAPES.items():
        config = json.loads((builtin.resolve(name, tmp_path) / "config.json").read_text())
        built = ModelShape.from_config(config)
        assert built is not None
        assert replace(built, tied=True) == shape, name


def test_a_cpu_allocation_past_the_trial_limit_fails_as_resources() -> None:
    """In a child process (the limit is for the process's life): the worker's limit, then an
    allocation past it through torch's CPU allocator, classified as the objective does."""
    code = (
        "from hpo.core.settings import Settings\n"
        "from worker.memory import limit_memory\n"
        "limit_memory(Settings(trial_memory_gb=4), 'cpu')\n"
        "import torch\n"
        "from worker.objective import fail_reason\n"
        "try:\n"
        "    torch.empty(5 * 2**30, dtype=torch.uint8)\n"
        "except Exception as exc:\n"
        "    print(fail_reason(exc))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.split() == ["resources"], ran.stdout
