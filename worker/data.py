"""Datasets: read a file, folder or built-in into train / eval / test splits in one of TRL's
shapes (language modelling, prompt-completion, conversational) or as labelled text, once per
process. Causal-LM tokenization is TRL's (see worker/sft.py); classification is tokenized here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase

from hpo.core.errors import SpecError
from hpo.core.files import RowTooLong, check_file_rows
from hpo.core.spec import DATA_SHAPES, DatasetSpec, ModelSpec, Task, dataset_format, dataset_shape
from worker import builtin
from worker.deadline import deadline
from worker.models import freeze_long_lived

datasets.disable_progress_bars()
MAX_LABELS = 10_000


@dataclass
class Splits:
    """Train / eval (/ test) splits of one shape.

    Causal-LM splits keep TRL's columns (text; prompt + completion; messages); classification
    splits are tokenized, with ``labels`` ids and ``label_names`` in id order.
    """

    train: datasets.Dataset
    eval: datasets.Dataset
    test: datasets.Dataset | None
    shape: str
    label_names: list[Any] | None = None
    # Token counts of the train examples, computed once: batches group similar lengths.
    train_lengths: list[int] | None = field(default=None, repr=False)

    @property
    def num_labels(self) -> int | None:
        return None if self.label_names is None else len(self.label_names)


def _read(
    path: str, declared: str, cache_dir: Path, max_row_bytes: int | None
) -> datasets.Dataset | datasets.DatasetDict:
    # The resolved path, exactly what the root check saw: never a pattern the library expands.
    real = Path(
        builtin.resolve(path, cache_dir) if builtin.is_builtin(path) else os.path.realpath(path)
    )
    fmt = dataset_format(declared, str(real), is_dir=real.is_dir())
    if fmt is None:
        raise ValueError(f"cannot tell the format of {real.name}; set dataset.format")
    if fmt == "disk":
        return datasets.load_from_disk(str(real))
    if max_row_bytes is not None:  # streamed first: the loaders would hold a long row whole
        try:
            check_file_rows(real, max_row_bytes, quoted=fmt == "csv")
        except RowTooLong as exc:
            raise SpecError(
                f"{real.name}: {exc} (HPO_MAX_ROW_BYTES)", loc=("train", "dataset")
            ) from None
    builder = "json" if fmt == "jsonl" else "csv"
    return datasets.load_dataset(builder, data_files=str(real), split="train")


def _first(loaded: datasets.Dataset | datasets.DatasetDict) -> datasets.Dataset:
    if isinstance(loaded, datasets.DatasetDict):
        return loaded["train" if "train" in loaded else next(iter(loaded))]
    return loaded


def _split(loaded: datasets.Dataset | datasets.DatasetDict, name: str | None) -> Any:
    if name is None or not isinstance(loaded, datasets.DatasetDict):
        return None
    if name not in loaded:
        raise ValueError(f"dataset has no split {name!r}; it has {list(loaded)}")
    return loaded[name]


def _canonical(split: datasets.Dataset, spec: DatasetSpec, shape: str) -> datasets.Dataset:
    """Only the shape's columns, under their loaded names (TRL's)."""
    keep = {getattr(spec, attr): name for attr, name in DATA_SHAPES[shape].fields.items()}
    split = split.remove_columns([c for c in split.column_names if c not in keep])
    renames = {old: new for old, new in keep.items() if old != new and old is not None}
    return split.rename_columns(renames) if renames else split


def _label_ids(splits: Splits) -> Splits:
    """The splits with each label as an id (``labels``) and ``label_names`` in id order."""
    train, evaluation, test = splits.train, splits.eval, splits.test
    label_names = sorted({*train["label"], *evaluation["label"], *(test["label"] if test else [])})
    if len(label_names) > MAX_LABELS:  # each is a row of the classifier's head
        raise ValueError(f"{len(label_names)} distinct labels; at most {MAX_LABELS} are allowed")
    index = {label: i for i, label in enumerate(label_names)}

    def to_id(row: dict[str, Any]) -> dict[str, Any]:
        return {"labels": index[row["label"]]}

    ids = [
        s.map(to_id, remove_columns=["label"]) if s is not None else None
        for s in (train, evaluation, test)
    ]
    return Splits(ids[0], ids[1], ids[2], splits.shape, label_names)


def load_splits(
    spec: DatasetSpec, *, task: Task, cache_dir: Path, max_row_bytes: int | None = None
) -> Splits:
    """Raw splits as the spec describes them: the validation split, file or fraction; the
    test split or file; each limited to its maximum. A JSONL or CSV row of more than
    ``max_row_bytes`` is a SpecError, found while streaming the file."""
    loaded = _read(spec.path, spec.format, cache_dir, max_row_bytes)
    train = _first(loaded)
    evaluation = _split(loaded, spec.validation_split)
    test = _split(loaded, spec.test_split)
    if spec.validation_path is not None:
        evaluation = _first(_read(spec.validation_path, spec.format, cache_dir, max_row_bytes))
    if spec.test_path is not None:
        test = _first(_read(spec.test_path, spec.format, cache_dir, max_row_bytes))
    if evaluation is None:
        parts = train.train_test_split(test_size=spec.validation_fraction, seed=spec.seed)
        train, evaluation = parts["train"], parts["test"]
    shape = dataset_shape(spec, train.column_names, task=task)
    train, evaluation = _canonical(train, spec, shape), _canonical(evaluation, spec, shape)
    test = _canonical(test, spec, shape) if test is not None else None
    if spec.max_train_examples:
        train = train.select(range(min(spec.max_train_examples, len(train))))
    evaluation = evaluation.select(range(min(spec.max_eval_examples, len(evaluation))))
    splits = Splits(train, evaluation, test, shape)
    return _label_ids(splits) if DATA_SHAPES[shape].labels else splits


def tokenize_classification(
    splits: Splits, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> Splits:
    """Tokenized text with label ids, and the train lengths for length-grouped batches."""

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        return tokenizer([str(t) for t in batch["text"]], truncation=True, max_length=max_length)

    def tokenize(split: datasets.Dataset | None) -> datasets.Dataset | None:
        if split is None:
            return None
        return split.map(encode, batched=True, remove_columns=["text"])

    train = tokenize(splits.train)
    assert train is not None
    lengths = [len(ids) for ids in train["input_ids"]]
    return Splits(
        train,
        tokenize(splits.eval),
        tokenize(splits.test),
        splits.shape,
        splits.label_names,
        lengths,
    )


class DataCache:
    """Raw splits per dataset, and prepared (tokenized) splits per (dataset, tokenizer, how),
    reused by every trial of the process."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        prepare_timeout: float | None = None,
        max_row_bytes: int | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.prepare_timeout = prepare_timeout
        self.max_row_bytes = max_row_bytes
        self._raw: dict[str, Splits] = {}
        self._prepared: dict[tuple[Any, ...], Splits] = {}

    def raw(self, spec: DatasetSpec, model: ModelSpec) -> Splits:
        key = spec.model_dump_json() + model.task
        if key not in self._raw:
            with self.bounded("reading the dataset"):
                self._raw[key] = load_splits(
                    spec,
                    task=model.task,
                    cache_dir=self.cache_dir,
                    max_row_bytes=self.max_row_bytes,
                )
        return self._raw[key]

    @contextmanager
    def bounded(self, what: str) -> Iterator[None]:
        """The block, stopped by Overrun after ``prepare_timeout`` seconds (when set)."""
        if self.prepare_timeout is None:
            yield
            return
        with deadline(self.prepare_timeout, what):
            yield

    def prepared(self, key: tuple[Any, ...]) -> Splits | None:
        return self._prepared.get(key)

    def keep(self, key: tuple[Any, ...], splits: Splits) -> Splits:
        self._prepared[key] = splits
        freeze_long_lived()
        return splits
