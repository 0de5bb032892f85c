"""Datasets: load a local file, folder or built-in, split off validation, tokenize, cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from hpo.core.spec import DatasetSpec, ModelSpec, dataset_format
from worker import builtin
from worker.models import freeze_long_lived

datasets.disable_progress_bars()


@dataclass
class Splits:
    train: datasets.Dataset
    eval: datasets.Dataset
    num_labels: int | None = None
    # Token counts of the train examples, computed once: batches group similar lengths.
    train_lengths: list[int] | None = None


def load_splits(spec: DatasetSpec, *, task: str, cache_dir: Path) -> Splits:
    """Raw train/validation splits as the spec describes them."""
    # The resolved path, exactly what the root check saw: never a pattern the library expands.
    path = Path(
        builtin.resolve(spec.path, cache_dir)
        if builtin.is_builtin(spec.path)
        else os.path.realpath(spec.path)
    )
    fmt = dataset_format(spec.format, str(path), is_dir=path.is_dir())
    if fmt is None:
        raise ValueError(f"cannot tell the format of {path.name}; set dataset.format")
    if fmt == "disk":
        loaded: Any = datasets.load_from_disk(str(path))
    else:
        builder = "json" if fmt == "jsonl" else "csv"
        loaded = datasets.load_dataset(builder, data_files=str(path), split="train")
    if isinstance(loaded, datasets.DatasetDict):
        if spec.validation_split and spec.validation_split in loaded:
            train_name = "train" if "train" in loaded else next(iter(loaded))
            train, evaluation = loaded[train_name], loaded[spec.validation_split]
        else:
            loaded = loaded["train" if "train" in loaded else next(iter(loaded))]
    if isinstance(loaded, datasets.Dataset):
        parts = loaded.train_test_split(test_size=spec.validation_fraction, seed=spec.seed)
        train, evaluation = parts["train"], parts["test"]
    for field in filter(None, (spec.text_field, spec.label_field)):
        if field not in train.column_names:
            raise ValueError(f"dataset has no field {field!r}; it has {train.column_names}")
    if spec.max_train_examples:
        train = train.select(range(min(spec.max_train_examples, len(train))))
    evaluation = evaluation.select(range(min(spec.max_eval_examples, len(evaluation))))
    num_labels = None
    if task == "sequence-classification":
        labels = sorted(set(train[spec.label_field]) | set(evaluation[spec.label_field]))
        index = {label: i for i, label in enumerate(labels)}
        label = spec.label_field
        assert label is not None  # the spec requires it for classification

        def to_id(row: dict[str, Any]) -> dict[str, Any]:
            return {"labels": index[row[label]]}

        train, evaluation = train.map(to_id), evaluation.map(to_id)
        num_labels = len(labels)
    return Splits(train, evaluation, num_labels)


class DataCache:
    """Tokenized splits per (dataset, tokenizer, max length), reused across trials."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._raw: dict[str, Splits] = {}
        self._tokenized: dict[tuple[str, str, int], Splits] = {}

    def raw(self, spec: DatasetSpec, model: ModelSpec) -> Splits:
        key = spec.model_dump_json() + model.task
        if key not in self._raw:
            self._raw[key] = load_splits(spec, task=model.task, cache_dir=self.cache_dir)
        return self._raw[key]

    def tokenized(
        self,
        spec: DatasetSpec,
        model: ModelSpec,
        tokenizer: PreTrainedTokenizerBase,
        tokenizer_path: str,
        max_length: int,
    ) -> Splits:
        key = (spec.model_dump_json() + model.task, tokenizer_path, max_length)
        if key not in self._tokenized:
            raw = self.raw(spec, model)
            field = spec.text_field

            def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
                return tokenizer(
                    [str(t) for t in batch[field]], truncation=True, max_length=max_length
                )

            keep = {"labels"}

            def tokenize(split: datasets.Dataset) -> datasets.Dataset:
                drop = [c for c in split.column_names if c not in keep]
                return split.map(encode, batched=True, remove_columns=drop)

            train = tokenize(raw.train)
            lengths = [len(ids) for ids in train["input_ids"]]
            self._tokenized[key] = Splits(train, tokenize(raw.eval), raw.num_labels, lengths)
            freeze_long_lived()
        return self._tokenized[key]
