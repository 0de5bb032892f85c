"""Check at registration what a spec points at: the data file parses and has the named fields,
a local model folder has a readable config. A mistake found here is a 422 naming the field;
found by a worker, it would cost failed trials first.

Reads only a file's head (bounded), so registration stays fast on large datasets. Hub model ids
are not checked here (that needs the network or the workers' cache).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from hpo.core.errors import SpecError
from hpo.core.settings import Settings
from hpo.core.spec import (
    BUILTIN_PREFIX,
    DatasetSpec,
    MissingField,
    StudySpec,
    dataset_format,
    dataset_shape,
    is_gguf,
)

HEAD_ROWS = 64
HEAD_BYTES = 4 * 2**20


Columns = tuple[set[str], dict[str, Any] | None]  # the fields, and a first row where cheap


def _jsonl_columns(path: Path, loc: tuple[str, ...]) -> Columns:
    columns: set[str] = set()
    first: dict[str, Any] | None = None
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    lines = [line for line in head.splitlines()[:HEAD_ROWS] if line.strip()]
    if not lines:
        raise SpecError(f"dataset {path.name} is empty.", loc=loc)
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except ValueError as exc:
            if number == len(lines) and len(head) == HEAD_BYTES:
                break  # the bounded read cut this line
            raise SpecError(f"{path.name} line {number} is not JSON: {exc}", loc=loc) from None
        if not isinstance(row, dict):
            raise SpecError(f"{path.name} line {number} is not a JSON object.", loc=loc)
        columns |= set(row)
        first = first or row
    return columns, first


def _csv_columns(path: Path, loc: tuple[str, ...]) -> Columns:
    with path.open(newline="", errors="replace") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise SpecError(f"dataset {path.name} has no CSV header.", loc=loc)
    return set(header), None


def _disk_columns(path: Path, split: str | None, loc: tuple[str, ...]) -> set[str]:
    """Columns of a ``datasets.save_to_disk`` folder, from its JSON metadata."""

    def features(folder: Path) -> set[str]:
        try:
            info = json.loads((folder / "dataset_info.json").read_text())
        except (OSError, ValueError):
            raise SpecError(
                f"{folder.name} is not a datasets.save_to_disk folder (no readable "
                "dataset_info.json).",
                loc=loc,
            ) from None
        return set(info.get("features") or {})

    dict_file = path / "dataset_dict.json"
    if not dict_file.is_file():
        return features(path)
    try:
        splits: list[str] = json.loads(dict_file.read_text())["splits"]
    except (OSError, ValueError, KeyError):
        raise SpecError(f"{path.name}/dataset_dict.json is not readable.", loc=loc) from None
    if split is not None and split not in splits:
        raise SpecError(
            f"dataset has no split {split!r}; it has {splits}.",
            loc=("train", "dataset", "validation_split"),
        )
    train = "train" if "train" in splits else splits[0]
    return features(path / train)


def _columns(data: DatasetSpec, attribute: str) -> Columns:
    """The fields of the file or folder the dataset's ``attribute`` (path, validation_path,
    test_path) names."""
    loc = ("train", "dataset", attribute)
    name = getattr(data, attribute)
    path = Path(name)
    if not path.exists():
        raise SpecError(f"dataset {name!r} does not exist.", loc=loc)
    fmt = dataset_format(data.format, name, is_dir=path.is_dir())
    if fmt is None:
        raise SpecError(
            f"cannot tell the format of {path.name}; name it .jsonl/.json/.csv or set "
            "dataset.format.",
            loc=loc,
        )
    if fmt == "disk":
        if not path.is_dir():
            raise SpecError(f"dataset.format disk needs a folder, got {path.name}.", loc=loc)
        split = data.validation_split if attribute == "path" else None
        return _disk_columns(path, split, loc), None
    if not path.is_file():
        raise SpecError(f"dataset.format {fmt} needs a file, got a folder.", loc=loc)
    return _jsonl_columns(path, loc) if fmt == "jsonl" else _csv_columns(path, loc)


def _check_dataset(spec: StudySpec) -> None:
    data = spec.train.dataset
    for attribute in data.paths():
        columns, first = _columns(data, attribute)
        if spec.train.model.task == "sequence-classification":
            for name in ("text_field", "label_field"):
                field = getattr(data, name)
                if field not in columns:
                    raise SpecError(f"dataset has no field {field!r}; it has {sorted(columns)}.",
                                    loc=("train", "dataset", name))  # fmt: skip
            continue
        try:
            shape = dataset_shape(data, columns)
        except MissingField as exc:
            raise SpecError(str(exc), loc=("train", "dataset", exc.attribute)) from None
        messages = shape == "conversational" or (
            shape == "prompt_completion" and first is not None
            and isinstance(first.get(data.prompt_field), list)
        )  # fmt: skip
        if messages and not _may_have_chat_template(spec.train.model.name_or_path):
            raise SpecError(
                f"{shape} data with message lists needs a chat template, and the model's "
                "tokenizer has none: use a model with one, or plain-text fields.",
                loc=("train", "model", "name_or_path"),
            )
        if spec.search.objective.generates and shape == "language_modeling":
            raise SpecError(
                f"{spec.search.objective.metric} compares answers with references: it needs "
                "prompt/completion or conversational data, not plain text.",
                loc=("search", "objective", "metric"),
            )


def _may_have_chat_template(model: str) -> bool:
    """False only where we know there is none: a built-in model or a local folder whose
    tokenizer files carry no template (a hub id or a GGUF file may still have one)."""
    if model.startswith(BUILTIN_PREFIX):
        return False
    folder = Path(model)
    if not folder.is_dir():
        return True
    if (folder / "chat_template.jinja").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return True  # no readable tokenizer config: the worker will say what is wrong
    return bool(isinstance(config, dict) and config.get("chat_template"))


def _check_model(spec: StudySpec) -> None:
    model = spec.train.model.name_or_path
    if not os.path.exists(model):
        return  # a hub id (check_spec_paths allowed it): resolved by the workers
    loc = ("train", "model", "name_or_path")
    if is_gguf(model):
        with open(model, "rb") as f:
            if f.read(4) != b"GGUF":
                raise SpecError(f"{Path(model).name} is not a GGUF file.", loc=loc)
        return
    try:
        config: Any = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        raise SpecError(
            f"model folder {Path(model).name!r} has no readable config.json.", loc=loc
        ) from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise SpecError(f"{Path(model).name}/config.json names no model_type.", loc=loc)


def check_inputs(spec: StudySpec, settings: Settings) -> None:
    """Raise SpecError when the spec's local data or model cannot be read as it says."""
    if not settings.verify_inputs:
        return
    _check_dataset(spec)
    if not spec.train.model.name_or_path.startswith(BUILTIN_PREFIX):
        _check_model(spec)
