"""Data shapes: how a dataset's rows are laid out, one entry each.

A new shape is one entry in ``DATA_SHAPES`` (plus, when it takes new ``DatasetSpec`` fields,
those fields); registration's checks (``hpo.core.preflight``), the spec and the worker's
loading, labelling and chat handling read its properties instead of comparing names. The
worker keys what only it can do (reading reference answers: ``worker.generation.REFERENCES``)
by the same names; ``tests/unit/test_registries.py`` holds the two in step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

Task = Literal["causal-lm", "sequence-classification"]  # what the model's head does


@dataclass(frozen=True)
class DataShape:
    """One layout of a dataset's rows.

    Attributes:
        task: The model task (``train.model.task``) that trains on it.
        fields: The ``DatasetSpec`` attributes naming its columns, each with the column's
            name once loaded (TRL's names), in the order they are checked.
        declarable: A spec may name it in ``dataset.shape`` (else it follows from the task).
        references: Each row holds a prompt and its reference answer: generation metrics
            can score it.
        chat: Rows are message lists, rendered with the tokenizer's chat template.
        chat_field: The attribute whose column may hold message lists instead of strings.
        labels: Rows carry a class label, mapped to ids when loaded.
        hint: What ``dataset.shape: auto`` recognises it by, for the schema.
    """

    task: Task
    fields: Mapping[str, str]
    declarable: bool = True
    references: bool = False
    chat: bool = False
    chat_field: str | None = None
    labels: bool = False
    hint: str = ""

    def holds_messages(
        self, row: Mapping[str, Any] | None, columns: Mapping[str, Any] | None = None
    ) -> bool:
        """Whether the data holds message lists, which only a chat template renders, judged
        by a first ``row`` (None: not known) whose columns ``columns`` names by attribute
        (default: the loaded names)."""
        if self.chat:
            return True
        if self.chat_field is None or row is None:
            return False
        column = (columns or self.fields)[self.chat_field]
        return isinstance(row.get(column), list)


# Declarable shapes in the order ``dataset.shape: auto`` tries them backwards: the last one
# whose fields the data has wins, else the first (TRL's shapes; classification is the task's).
DATA_SHAPES: dict[str, DataShape] = {
    "language_modeling": DataShape("causal-lm", {"text_field": "text"}, hint="the text field"),
    "prompt_completion": DataShape(
        "causal-lm",
        {"prompt_field": "prompt", "completion_field": "completion"},
        references=True,
        chat_field="prompt_field",
        hint="prompt + completion",
    ),
    "conversational": DataShape(
        "causal-lm", {"messages_field": "messages"}, references=True, chat=True, hint="messages"
    ),
    "classification": DataShape(
        "sequence-classification",
        {"text_field": "text", "label_field": "label"},
        declarable=False,
        labels=True,
    ),
}
DECLARABLE = tuple(name for name, shape in DATA_SHAPES.items() if shape.declarable)

if TYPE_CHECKING:
    DeclaredShape = str
else:
    DeclaredShape = Literal[("auto", *DECLARABLE)]


def auto_help() -> str:
    """What ``dataset.shape: auto`` picks, for the schema."""
    first, *rest = DECLARABLE
    tried = ", ".join(f"{DATA_SHAPES[name].hint} -> {name}" for name in reversed(rest))
    return f"auto: {tried}, else {DATA_SHAPES[first].hint} -> {first}."


def shapes_of(task: Task) -> list[str]:
    """The shapes a model of ``task`` trains on, in the order ``auto`` tries them backwards."""
    return [name for name, shape in DATA_SHAPES.items() if shape.task == task]


def detect(task: Task, declared: str, has: Callable[[str], bool]) -> str:
    """The shape of data for ``task``: ``declared`` when it is one of the task's, else the
    last of them whose every field the data ``has`` (by attribute), else the first."""
    names = shapes_of(task)
    if declared in names:
        return declared
    found = [name for name in names if all(map(has, DATA_SHAPES[name].fields))]
    return found[-1] if found else names[0]
