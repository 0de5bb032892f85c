"""Check at registration what a spec points at: the data file parses and has the named fields,
a local model folder has a readable config. A mistake found here is a 422 naming the field;
found by a worker, it would cost failed trials first.

Reads only a file's head (bounded by HPO_PREFLIGHT_READ_BYTES), so registration stays fast on
large datasets, and only regular files, opened non-blocking (``hpo.core.files``): a FIFO or a
2 GB line is a 422, never a blocked or exhausted API; so is a row in the head longer than
HPO_MAX_ROW_BYTES. Hub model ids are not checked here (that needs the network or the workers'
cache). ``check_allocation`` refuses what a trial would allocate past the operator's limits,
estimated from the model's config where it can be read.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from hpo.core.errors import PastLimits, SpecError
from hpo.core.estimate import BUILTIN_SHAPES, Limits, ModelShape, problems
from hpo.core.files import NotRegularFile, RowTooLong, check_rows, read_head, read_whole
from hpo.core.gguf import BadGGUF, check_gguf
from hpo.core.settings import Settings
from hpo.core.spec import (
    BUILTIN_PREFIX,
    DATA_SHAPES,
    DatasetSpec,
    MissingField,
    StudySpec,
    dataset_format,
    dataset_shape,
    is_gguf,
)

HEAD_ROWS = 64
# Errors of parsing a tenant's JSON: nesting deeper than the parser's recursion limit included.
JSON_ERRORS = (ValueError, RecursionError)


Columns = tuple[set[str], dict[str, Any] | None]  # the fields, and a first row where cheap


def _head(path: Path, limit: int, loc: tuple[str, ...], rows: int, *, quoted: bool) -> bytes:
    """The file's first ``limit`` bytes, whose rows (the one the bound cuts included) hold at
    most ``rows`` bytes each."""
    try:
        head = read_head(path, limit)
        check_rows([head], rows, quoted=quoted)
    except NotRegularFile as exc:
        raise SpecError(f"dataset {exc}", loc=loc) from None
    except RowTooLong as exc:
        raise SpecError(f"{path.name}: {exc} (HPO_MAX_ROW_BYTES).", loc=loc) from None
    except OSError as exc:
        raise SpecError(f"dataset {path.name} cannot be read: {exc.strerror}.", loc=loc) from None
    return head


def _jsonl_columns(path: Path, loc: tuple[str, ...], limit: int, rows: int) -> Columns:
    columns: set[str] = set()
    first: dict[str, Any] | None = None
    head = _head(path, limit, loc, rows, quoted=False)
    lines = [line for line in head.splitlines()[:HEAD_ROWS] if line.strip()]
    if not lines:
        raise SpecError(f"dataset {path.name} is empty.", loc=loc)
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except JSON_ERRORS as exc:
            if number == len(lines) and len(head) == limit:
                if number == 1:
                    raise SpecError(
                        f"{path.name} line 1 is longer than {limit} bytes "
                        "(HPO_PREFLIGHT_READ_BYTES).",
                        loc=loc,
                    ) from None
                break  # the bounded read cut this line
            why = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise SpecError(f"{path.name} line {number} is not JSON: {why}", loc=loc) from None
        if not isinstance(row, dict):
            raise SpecError(f"{path.name} line {number} is not a JSON object.", loc=loc)
        columns |= set(row)
        first = first or row
    return columns, first


def _csv_columns(path: Path, loc: tuple[str, ...], limit: int, rows: int) -> Columns:
    head = _head(path, limit, loc, rows, quoted=True)
    if len(head) == limit and b"\n" not in head and b"\r" not in head:
        raise SpecError(
            f"{path.name}'s header line is longer than {limit} bytes (HPO_PREFLIGHT_READ_BYTES).",
            loc=loc,
        )
    text = io.StringIO(head.decode(errors="replace"), newline="")
    try:
        header = next(csv.reader(text), None)
    except csv.Error as exc:
        raise SpecError(f"{path.name} has no readable CSV header: {exc}.", loc=loc) from None
    if not header:
        raise SpecError(f"dataset {path.name} has no CSV header.", loc=loc)
    return set(header), None


def _json_file(path: Path, limit: int) -> Any:
    """A small JSON metadata file, parsed; OSError or ValueError when it cannot be."""
    try:
        return json.loads(read_whole(path, limit))
    except RecursionError:
        raise ValueError(f"{path.name} is nested too deeply.") from None


def _disk_columns(path: Path, split: str | None, loc: tuple[str, ...], limit: int) -> set[str]:
    """Columns of a ``datasets.save_to_disk`` folder, from its JSON metadata."""

    def features(folder: Path) -> set[str]:
        try:
            info = _json_file(folder / "dataset_info.json", limit)
        except (OSError, ValueError):
            raise SpecError(
                f"{folder.name} is not a datasets.save_to_disk folder (no readable "
                "dataset_info.json).",
                loc=loc,
            ) from None
        found = info.get("features") if isinstance(info, dict) else None
        if not isinstance(found, dict | None):
            raise SpecError(
                f"{folder.name}/dataset_info.json: features is not an object.", loc=loc
            )
        return set(found or {})

    dict_file = path / "dataset_dict.json"
    if not dict_file.exists():
        return features(path)
    try:
        splits = _json_file(dict_file, limit)["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SpecError(f"{path.name}/dataset_dict.json is not readable.", loc=loc) from None
    if not (isinstance(splits, list) and splits and all(isinstance(s, str) for s in splits)):
        raise SpecError(f"{path.name}/dataset_dict.json: splits is not a list of names.", loc=loc)
    if split is not None and split not in splits:
        raise SpecError(
            f"dataset has no split {split!r}; it has {splits}.",
            loc=("train", "dataset", "validation_split"),
        )
    train = "train" if "train" in splits else splits[0]
    if Path(train).name != train or train in ("", ".", ".."):
        raise SpecError(f"{path.name}/dataset_dict.json names split {train!r}.", loc=loc)
    return features(path / train)


def _columns(data: DatasetSpec, attribute: str, limit: int, rows: int) -> Columns:
    """The fields of the file or folder the dataset's ``attribute`` (path, validation_path,
    test_path) names; a file's rows in its head hold at most ``rows`` bytes."""
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
        return _disk_columns(path, split, loc, limit), None
    if path.is_dir():
        raise SpecError(f"dataset.format {fmt} needs a file, got a folder.", loc=loc)
    columns = _jsonl_columns if fmt == "jsonl" else _csv_columns
    return columns(path, loc, limit, rows)


def _check_dataset(spec: StudySpec, limit: int, rows: int) -> None:
    data = spec.train.dataset
    for attribute in data.paths():
        columns, first = _columns(data, attribute, limit, rows)
        try:
            shape = dataset_shape(data, columns, task=spec.train.model.task)
        except MissingField as exc:
            raise SpecError(str(exc), loc=("train", "dataset", exc.attribute)) from None
        layout = DATA_SHAPES[shape]
        messages = layout.holds_messages(first, data.model_dump())
        if messages and not _may_have_chat_template(spec.train.model.name_or_path, limit):
            raise SpecError(
                f"{shape} data with message lists needs a chat template, and the model's "
                "tokenizer has none: use a model with one, or plain-text fields.",
                loc=("train", "model", "name_or_path"),
            )
        if spec.search.objective.generates and not layout.references:
            raise SpecError(
                f"{spec.search.objective.metric} compares answers with references: it needs "
                "prompt/completion or conversational data, not plain text.",
                loc=("search", "objective", "metric"),
            )


def _may_have_chat_template(model: str, limit: int) -> bool:
    """False only where we know there is none: a built-in model or a local folder whose
    tokenizer files carry no template (a hub id or a GGUF file may still have one)."""
    if model.startswith(BUILTIN_PREFIX):
        return False
    folder = Path(model)
    if not folder.is_dir():
        return True
    if (folder / "chat_template.jinja").exists():
        return True
    try:
        config = _json_file(folder / "tokenizer_config.json", limit)
    except (OSError, ValueError):
        return True  # no readable tokenizer config: the worker will say what is wrong
    return bool(isinstance(config, dict) and config.get("chat_template"))


def _check_model(spec: StudySpec, settings: Settings) -> None:
    model = spec.train.model.name_or_path
    if not os.path.exists(model):
        return  # a hub id (check_spec_paths allowed it): resolved by the workers
    loc = ("train", "model", "name_or_path")
    if is_gguf(model):
        try:
            check_gguf(model, max_items=settings.gguf_max_items)
        except (BadGGUF, NotRegularFile) as exc:
            raise SpecError(str(exc), loc=loc) from None
        except OSError as exc:
            raise SpecError(
                f"{Path(model).name} cannot be read: {exc.strerror}.", loc=loc
            ) from None
        return
    try:
        config: Any = _json_file(Path(model) / "config.json", settings.preflight_read_bytes)
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
    _check_dataset(spec, settings.preflight_read_bytes, settings.max_row_bytes)
    if not spec.train.model.name_or_path.startswith(BUILTIN_PREFIX):
        _check_model(spec, settings)


def _model_shape(spec: StudySpec, settings: Settings) -> ModelShape | None:
    """The model's sizes: a built-in's, or a local folder's ``config.json``; None for a hub id,
    a GGUF file, or where the API may not read the workers' files."""
    model = spec.train.model.name_or_path
    if model in BUILTIN_SHAPES:
        return BUILTIN_SHAPES[model]
    if not settings.verify_inputs or is_gguf(model) or not os.path.isdir(model):
        return None
    try:
        config = _json_file(Path(model) / "config.json", settings.preflight_read_bytes)
    except (OSError, ValueError):
        return None  # check_inputs says what is wrong with it
    return ModelShape.from_config(config) if isinstance(config, dict) else None


def check_allocation(spec: StudySpec, settings: Settings) -> None:
    """Raise PastLimits, one error per field, where a trial of ``spec`` would allocate past
    the operator's per-worker limits (``hpo.core.estimate``)."""
    found = problems(spec, _model_shape(spec, settings), Limits.from_settings(settings))
    if found:
        raise PastLimits(
            [
                SpecError(
                    problem.message,
                    loc=loc,
                    kind="resource_limit",
                    ctx={
                        "estimate": problem.estimate,
                        "limit": problem.limit,
                        "unit": problem.unit,
                        "setting": problem.setting,
                    },
                )
                for problem in found
                for loc in problem.fields
            ]
        )
