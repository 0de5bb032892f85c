"""Objective metrics, one entry each.

A new metric is one entry in ``METRICS``: the spec (its direction, the task and data it needs,
whether it takes a pattern) and registration's checks read it. A generation metric's scorer
is the worker's (``worker.metrics.SCORERS``, keyed by the same names;
``tests/unit/test_registries.py`` holds the two in step); the others are what the trainer's
evaluation returns under the metric's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from hpo.core.spec.shapes import Task

Direction = Literal["minimize", "maximize"]


@dataclass(frozen=True)
class Metric:
    """One objective a trial can report.

    Attributes:
        direction: Which way is better; a spec's ``direction`` follows it.
        task: The model task (``train.model.task``) it needs, or None for any.
        generates: Scored on answers generated for the evaluation prompts, against data with
            reference answers (``DataShape.references``); else the trainer's evaluation
            reports it.
        pattern: Takes the objective's ``pattern``, which no other metric does.
        ceiling: The best value it can take (a share of answers: 1.0), None for a loss:
            there, it saturates and only the tie-break tells trials apart.
    """

    direction: Direction
    task: Task | None = None
    generates: bool = False
    pattern: bool = False
    ceiling: float | None = None


METRICS: dict[str, Metric] = {
    "eval_loss": Metric("minimize"),
    "eval_accuracy": Metric("maximize", task="sequence-classification", ceiling=1.0),
    "exact_match": Metric("maximize", task="causal-lm", generates=True, ceiling=1.0),
    "token_f1": Metric("maximize", task="causal-lm", generates=True, ceiling=1.0),
    "rouge_l": Metric("maximize", task="causal-lm", generates=True, ceiling=1.0),
    "regex": Metric("maximize", task="causal-lm", generates=True, pattern=True, ceiling=1.0),
    "contains": Metric("maximize", task="causal-lm", generates=True, ceiling=1.0),
}
# Scores a study can break ties on, lower better: the validation loss every trial measures.
TieBreak = Literal["eval_loss"]
GENERATION_METRICS = tuple(name for name, metric in METRICS.items() if metric.generates)
PATTERN_METRICS = tuple(name for name, metric in METRICS.items() if metric.pattern)

if TYPE_CHECKING:
    MetricName = str
else:
    MetricName = Literal[tuple(METRICS)]
