"""Causal-LM data through TRL: its dataset shapes, chat templates, EOS handling, completion-only
and assistant-only labels, and packing. TRL prepares (tokenizes) the data once per process; each
trial's ``SFTTrainer`` then takes the prepared splits as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import has_generation_markers

from hpo.core.spec import DATA_SHAPES
from worker.data import Splits

# What a trial's SFTTrainer needs of a prepared split; TRL adds seq_lengths when packing.
PREPARED_COLUMNS = ("input_ids", "labels", "seq_lengths")
# The shape of chat data cut per assistant turn (``per_assistant_turn``).
TURN_SHAPE = "prompt_completion"


class NoChatTemplate(ValueError):
    """Conversational data on a tokenizer without a chat template: nothing to render it with."""


def needs_template(splits: Splits) -> bool:
    """Whether the data holds message lists, which only a chat template can render."""
    first = splits.train[0] if len(splits.train) else {}
    return DATA_SHAPES[splits.shape].holds_messages(first)


def _turns(messages: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for i, message in enumerate(messages):
        if message.get("role") == "assistant":
            yield {"prompt": messages[:i], "completion": [message]}


def per_assistant_turn(split: datasets.Dataset) -> datasets.Dataset:
    """Each assistant turn as a prompt (the conversation before it) + completion example.

    TRL's assistant-only loss needs ``{% generation %}`` markers in the chat template; most
    templates have none. Prompt-completion examples get the same loss tokens through TRL's
    completion mask, at the cost of encoding each turn's context again.
    """
    rows = [turn for messages in split["messages"] for turn in _turns(messages)]
    if not rows:
        raise ValueError("conversational data needs assistant turns to learn from")
    return datasets.Dataset.from_list(rows)


def config(
    trainer_args: dict[str, Any], *, loss_on: str, splits: Splits, tokenizer: Any, **sft: Any
) -> SFTConfig:
    """TRL's SFTConfig for this data: the trainer arguments plus how the loss is masked."""
    assistant_only = (
        loss_on == "completion"
        and DATA_SHAPES[splits.shape].chat
        and has_generation_markers(tokenizer.chat_template or "")
    )
    return SFTConfig(
        **trainer_args,
        **sft,
        completion_only_loss=loss_on == "completion",
        assistant_only_loss=assistant_only,
    )


def training_splits(splits: Splits, args: SFTConfig, tokenizer: PreTrainedTokenizerBase) -> Splits:
    """The splits TRL should see: conversations turned per assistant turn where needed.

    Raises:
        NoChatTemplate: Message lists and a tokenizer without a chat template.
    """
    if needs_template(splits) and not tokenizer.chat_template:
        raise NoChatTemplate(
            f"the tokenizer of this model has no chat template, and {splits.shape} data with "
            "message lists needs one: use a model with a chat template, or give plain-text "
            "prompt / completion (or text) fields"
        )
    turns_needed = args.completion_only_loss and not args.assistant_only_loss
    if not DATA_SHAPES[splits.shape].chat or not turns_needed:
        return splits
    test = per_assistant_turn(splits.test) if splits.test is not None else None
    train, evaluation = per_assistant_turn(splits.train), per_assistant_turn(splits.eval)
    return Splits(train, evaluation, test, TURN_SHAPE)


def prepare(
    splits: Splits, args: SFTConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> Splits:
    """Tokenize and label every split with TRL's own preparation, once.

    A throwaway SFTTrainer does it (TRL's preparation lives in its constructor); its model is
    the base model, left as it was but for ``use_cache``, which generation turns back on.
    """
    splits = training_splits(splits, args, tokenizer)
    named = {"eval": splits.eval} | ({"test": splits.test} if splits.test is not None else {})
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=splits.train,
        eval_dataset=named,
        processing_class=tokenizer,
    )
    evaluated: Any = trainer.eval_dataset  # the dict we gave, each split prepared
    prepared = {"train": trainer.train_dataset, **evaluated}
    del trainer

    def keep(split: datasets.Dataset) -> datasets.Dataset:
        return split.select_columns([c for c in PREPARED_COLUMNS if c in split.column_names])

    train = keep(prepared["train"])
    lengths = [len(ids) for ids in train["input_ids"]]
    test = keep(prepared["test"]) if "test" in prepared else None
    return Splits(train, keep(prepared["eval"]), test, splits.shape, train_lengths=lengths)
