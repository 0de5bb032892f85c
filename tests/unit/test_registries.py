"""The registries of data shapes and metrics: the core's entries and the worker's functions
keyed by the same names stay in step, so a new entry cannot be half added."""

from __future__ import annotations

import inspect

import pytest

from hpo.core.hyperparameters import HYPERPARAMETERS
from hpo.core.spec import DATA_SHAPES, METRICS, PBT_MUTABLE, DatasetSpec, Task, dataset_shape
from worker.callbacks import Retune
from worker.generation import REFERENCES
from worker.metrics import SCORERS


def test_every_generation_metric_has_a_scorer_and_only_those() -> None:
    assert set(SCORERS) == {name for name, metric in METRICS.items() if metric.generates}


def test_every_shape_with_references_has_a_reader_and_only_those() -> None:
    assert set(REFERENCES) == {name for name, shape in DATA_SHAPES.items() if shape.references}


def test_the_pbt_mutable_settings_are_those_declared_mutable() -> None:
    assert PBT_MUTABLE
    assert set(PBT_MUTABLE) == {hp.name for hp in HYPERPARAMETERS if hp.mutable}


def test_a_resumed_segment_applies_every_mutable_setting() -> None:
    """A mutable optimiser setting is set on the loaded optimiser (Retune); a LoRA one is
    applied by building the adapter from the new value; no other kind can change mid-run."""
    retuned = set(inspect.signature(Retune).parameters)
    for hp in HYPERPARAMETERS:
        if hp.mutable:
            assert hp.target == "lora" or (hp.target == "trainer" and hp.name in retuned), hp


@pytest.mark.parametrize(
    ("columns", "task", "shape"),
    [
        ({"text"}, "causal-lm", "language_modeling"),
        ({"text", "prompt", "completion"}, "causal-lm", "prompt_completion"),
        ({"prompt", "completion", "messages"}, "causal-lm", "conversational"),
        ({"text", "label", "messages"}, "sequence-classification", "classification"),
    ],
)
def test_auto_takes_the_most_specific_shape_the_fields_allow(
    columns: set[str], task: Task, shape: str
) -> None:
    spec = DatasetSpec(path="data.jsonl", label_field="label")
    assert dataset_shape(spec, columns, task=task) == shape
