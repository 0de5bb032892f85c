"""What a study trains on: the model and the dataset, and the shape its rows have."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePath
from typing import Annotated, Literal

from pydantic import Field, field_validator

from hpo.core.spec.base import PATH_PATTERN, Strict
from hpo.core.spec.shapes import DATA_SHAPES, DeclaredShape, Task, auto_help, detect

BUILTIN_PREFIX = "builtin:"
# Built locally by the worker (worker/builtin.py), never downloaded; models with their task.
BUILTIN_MODELS = {
    "builtin:tiny-llama": "causal-lm",
    "builtin:tiny-encoder": "sequence-classification",
}
BUILTIN_DATASETS = ("builtin:demo-text", "builtin:demo-classification")
GLOB_CHARACTERS = "*?[]{}"


def _known_builtin(value: str, known: Iterable[str], what: str) -> str:
    if value.startswith(BUILTIN_PREFIX) and value not in known:
        raise ValueError(f"unknown built-in {what} {value!r}; known ones are {sorted(known)}.")
    return value


class ModelSpec(Strict):
    name_or_path: str = Field(
        min_length=1,
        max_length=512,
        pattern=PATH_PATTERN,
        description="A local Hugging Face checkpoint folder, a hub id (resolved through the "
        "workers' Hugging Face cache; offline with HF_HUB_OFFLINE=1), a .gguf file "
        "(dequantized by transformers) or builtin:tiny-llama / builtin:tiny-encoder.",
    )
    task: Task = "causal-lm"
    revision: str | None = Field(default=None, max_length=128, pattern=r"^[\w.\-/]+$")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"

    @field_validator("name_or_path")
    @classmethod
    def _builtin(cls, value: str) -> str:
        return _known_builtin(value, BUILTIN_MODELS, "model")

    @field_validator("revision")
    @classmethod
    def _no_parent(cls, value: str | None) -> str | None:
        if value is not None and ".." in value:
            raise ValueError(f"revision must not contain '..', but got {value!r}.")
        return value


def is_gguf(name_or_path: str) -> bool:
    return PurePath(name_or_path).suffix.lower() == ".gguf"


def dataset_format(declared: str, path: str, *, is_dir: bool) -> str | None:
    """The format a dataset path is read as, or None when it cannot be told."""
    if declared != "auto":
        return declared
    if is_dir:
        return "disk"
    suffix = PurePath(path).suffix
    return {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}.get(suffix)


DataPath = Annotated[str, Field(min_length=1, max_length=1024, pattern=PATH_PATTERN)]
FieldName = Annotated[str, Field(min_length=1, max_length=128)]


def _one_file(value: str | None) -> str | None:
    # The datasets library expands globs: a pattern could reach files the root check never saw.
    # A dataset is exactly one file or folder.
    if value is not None and any(c in value for c in GLOB_CHARACTERS):
        raise ValueError(
            f"path must name one file or folder; glob characters {GLOB_CHARACTERS} are not "
            f"allowed, but got {value!r}."
        )
    return value


class DatasetSpec(Strict):
    """The data, in TRL's dataset shapes: language modelling (a text field), prompt-completion
    (prompt + completion: strings or message lists) or conversational (messages: a list of
    {role, content}); classification data is text + label."""

    path: DataPath = Field(description="A JSONL/CSV file, a save_to_disk folder or a builtin.")
    format: Literal["auto", "jsonl", "csv", "disk"] = "auto"
    shape: DeclaredShape = Field(default="auto", description=auto_help())
    text_field: FieldName = "text"
    prompt_field: FieldName = "prompt"
    completion_field: FieldName = "completion"
    messages_field: FieldName = "messages"
    label_field: FieldName | None = None
    validation_path: DataPath | None = Field(
        default=None, description="A separate validation file in the same format."
    )
    test_path: DataPath | None = Field(
        default=None, description="A held-out test file: scored once, at the end of a trial."
    )
    validation_split: FieldName | None = Field(
        default=None, description="The validation split's name in a save_to_disk folder."
    )
    test_split: FieldName | None = None
    validation_fraction: float = Field(
        default=0.1, gt=0.0, le=0.5, description="Split off when no validation data is named."
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    max_train_examples: int | None = Field(default=None, ge=1, le=10**8)
    max_eval_examples: int = Field(default=256, ge=1, le=10**6)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        _one_file(value)
        return _known_builtin(value, BUILTIN_DATASETS, "dataset")

    @field_validator("validation_path", "test_path")
    @classmethod
    def _other_paths(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(BUILTIN_PREFIX):
            raise ValueError("validation and test data must be files or folders.")
        return _one_file(value)

    def paths(self) -> dict[str, str]:
        """Every local path the spec reads, by field name."""
        named = {
            "path": self.path,
            "validation_path": self.validation_path,
            "test_path": self.test_path,
        }
        return {k: v for k, v in named.items() if v and not v.startswith(BUILTIN_PREFIX)}


class MissingField(ValueError):
    """The data lacks a field the spec names; ``attribute`` is the spec's (e.g. text_field)."""

    def __init__(self, attribute: str, field: str, columns: Iterable[str]) -> None:
        super().__init__(f"dataset has no field {field!r}; it has {sorted(columns)}.")
        self.attribute = attribute


def dataset_shape(spec: DatasetSpec, columns: Iterable[str], *, task: Task) -> str:
    """The shape (``DATA_SHAPES``) of data with these columns for a model of ``task``, as the
    spec declares or as its fields say.

    Raises:
        MissingField: A field the shape needs is missing.
    """
    columns = set(columns)
    shape = detect(task, spec.shape, lambda attribute: getattr(spec, attribute) in columns)
    for name in DATA_SHAPES[shape].fields:
        if getattr(spec, name) not in columns:
            raise MissingField(name, getattr(spec, name), columns)
    return shape
