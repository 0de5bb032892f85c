"""Answers to evaluation prompts, generated in batches, and their scores.

A prompt-completion example asks its prompt and expects its completion; a conversation asks
everything before its last assistant turn and expects that turn. String prompts are encoded as
the tokenizer does; message lists through the chat template with the generation prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from hpo.core.hyperparameters import arguments
from worker import liveness
from worker.deadline import deadline
from worker.metrics import mean_score

SAMPLING = ("temperature", "top_p", "top_k", "min_p")


@dataclass(frozen=True)
class Example:
    prompt: str | list[dict[str, Any]]
    reference: str


def _completion(row: dict[str, Any]) -> Example:
    completion = row["completion"]
    text = completion if isinstance(completion, str) else completion[-1]["content"]
    return Example(row["prompt"], text)


def _last_turn(row: dict[str, Any]) -> Example:
    messages = row["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return Example(messages[:last], messages[last]["content"])


# How each shape with references (``DataShape.references``) gives a prompt and its answer.
REFERENCES: dict[str, Callable[[dict[str, Any]], Example]] = {
    "prompt_completion": _completion,
    "conversational": _last_turn,
}


def examples(split: datasets.Dataset, shape: str, limit: int) -> list[Example]:
    """Prompts and reference answers of the first ``limit`` examples.

    Raises:
        ValueError: The shape has no reference answers (language modelling).
    """
    read = REFERENCES.get(shape)
    if read is None:
        raise ValueError(
            "generation metrics need reference answers: prompt/completion or conversational "
            f"data, not {shape}"
        )
    return [read(row) for row in split.select(range(min(limit, len(split))))]


def decoding(settings: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """The trial's decoding settings; greedy unless a sampling setting is given."""
    given = arguments(settings, "generation")
    sample = any(k in given for k in SAMPLING)
    return GenerationConfig(
        **given,
        do_sample=sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,  # TRL's trainer turns the model's cache off for training
    )


def _encode(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict[str, Any]]) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    rendered: Any = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(rendered["input_ids"])


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str | list[dict[str, Any]]],
    config: GenerationConfig,
    *,
    batch_size: int,
    max_prompt_tokens: int,
    render_timeout: float | None = None,
) -> list[str]:
    """The answer to each prompt (special tokens dropped), batched with left padding; the
    prompts rendered (chat template) and encoded within ``render_timeout`` seconds."""
    device = next(model.parameters()).device
    if render_timeout is None:
        encoded = [_encode(tokenizer, p)[-max_prompt_tokens:] for p in prompts]
    else:
        with deadline(render_timeout, "rendering the evaluation prompts (chat template)"):
            encoded = [_encode(tokenizer, p)[-max_prompt_tokens:] for p in prompts]
    answers: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            width = max(len(ids) for ids in batch)
            pad = tokenizer.pad_token_id
            ids = torch.tensor([[pad] * (width - len(x)) + x for x in batch], device=device)
            mask = torch.tensor(
                [[0] * (width - len(x)) + [1] * len(x) for x in batch], device=device
            )
            out = model.generate(  # type: ignore[operator]  # transformers' stub
                input_ids=ids, attention_mask=mask, generation_config=config
            )
            answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
            liveness.progress()
    finally:
        model.train(was_training)
    return [a.strip() for a in answers]


@dataclass
class GenerationScore:
    value: float
    seconds: float
    predictions: list[str]


def score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chosen: list[Example],
    *,
    metric: str,
    pattern: str | None,
    config: GenerationConfig,
    batch_size: int,
    max_prompt_tokens: int,
    render_timeout: float | None = None,
) -> GenerationScore:
    started = time.perf_counter()
    predictions = generate(
        model,
        tokenizer,
        [e.prompt for e in chosen],
        config,
        batch_size=batch_size,
        max_prompt_tokens=max_prompt_tokens,
        render_timeout=render_timeout,
    )
    value = mean_score(metric, predictions, [e.reference for e in chosen], pattern)
    return GenerationScore(value, time.perf_counter() - started, predictions)
