"""The run: who ran a trial, what it measured, what it resolved on the model, who enqueued
it, a warm start's source and a decode study's greedy baseline."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hpo.core.records.base import Attrs, Writable, _attrs, _float, _str
from hpo.core.records.keys import (
    DEVICE_ATTR,
    ENQUEUED_BY_ATTR,
    EVAL_LOSS_CURVE_ATTR,
    FINAL_LOSS_ATTR,
    GREEDY_ATTR,
    HOSTNAME_ATTR,
    MAX_SAMPLE_CHARS,
    PRECISION_ATTR,
    RANK_PATTERN_ATTR,
    RESOLVED_TARGETS_ATTR,
    SAMPLE_ANSWER_ATTR,
    SCORE_DIGITS,
    TIE_BREAK_ATTR,
    WARM_START_ATTR,
    WORKER_ATTR,
)


def worker(record: Attrs) -> str | None:
    """The id of the worker that ran the trial (``host-pid-...``)."""
    return _str(record, WORKER_ATTR)


def hostname(record: Attrs) -> str | None:
    return _str(record, HOSTNAME_ATTR)


def device(record: Attrs) -> str | None:
    return _str(record, DEVICE_ATTR)


def record_worker(trial: Writable, *, worker: str, hostname: str, device: str) -> None:
    """Who runs the trial, where."""
    trial.set_user_attr(WORKER_ATTR, worker)
    trial.set_user_attr(HOSTNAME_ATTR, hostname)
    trial.set_user_attr(DEVICE_ATTR, device)


def precision(record: Attrs) -> dict[str, bool] | None:
    """``{"bf16", "fp16", "use_cpu"}`` as the trial's Trainer ran (None: not recorded)."""
    value = _attrs(record).get(PRECISION_ATTR)
    return None if value is None else {k: bool(v) for k, v in dict(value).items()}


def record_precision(trial: Writable, *, bf16: bool, fp16: bool, use_cpu: bool) -> None:
    trial.set_user_attr(PRECISION_ATTR, {"bf16": bf16, "fp16": fp16, "use_cpu": use_cpu})


def score(record: Attrs, metric: str) -> float | None:
    """A score the trial measured, by metric name (``eval_loss``, ``test_accuracy``, ...)."""
    return _float(record, metric)


def record_scores(trial: Writable, scores: Mapping[str, float]) -> None:
    """Every score the trial measured, keyed by its metric's name."""
    for metric, value in scores.items():
        trial.set_user_attr(metric, round(value, SCORE_DIGITS))


def tie_break(record: Attrs) -> float | None:
    """The trial's final tie-break score (lower better), if its study has one."""
    return _float(record, TIE_BREAK_ATTR)


def record_tie_break(trial: Writable, name: str | None, scores: Mapping[str, float]) -> None:
    """The tie-break score ``name`` (``objective.tie_break``) among the trial's ``scores``."""
    if name is not None and name in scores:
        trial.set_user_attr(TIE_BREAK_ATTR, round(scores[name], SCORE_DIGITS))


def final_train_loss(record: Attrs) -> float | None:
    return _float(record, FINAL_LOSS_ATTR)


def set_final_train_loss(trial: Writable, loss: float) -> None:
    trial.set_user_attr(FINAL_LOSS_ATTR, loss)


def eval_loss_curve(record: Attrs) -> dict[int, float] | None:
    """``eval_loss`` by step (examples seen)."""
    value = _attrs(record).get(EVAL_LOSS_CURVE_ATTR)
    return None if value is None else {int(k): float(v) for k, v in value.items()}


def set_eval_loss_curve(trial: Writable, curve: Mapping[int, float] | Mapping[str, float]) -> None:
    # JSON keys are strings: stored so, it reads back as written.
    trial.set_user_attr(EVAL_LOSS_CURVE_ATTR, {str(k): v for k, v in curve.items()})


def sample_answer(record: Attrs) -> str | None:
    return _str(record, SAMPLE_ANSWER_ATTR)


def set_sample_answer(trial: Writable, answer: str) -> None:
    """One generated answer, cut at ``MAX_SAMPLE_CHARS``."""
    trial.set_user_attr(SAMPLE_ANSWER_ATTR, answer[:MAX_SAMPLE_CHARS])


def resolved_targets(record: Attrs) -> list[str] | None:
    """The LoRA target modules resolved on the model."""
    value = _attrs(record).get(RESOLVED_TARGETS_ATTR)
    return None if value is None else [str(v) for v in value]


def set_resolved_targets(trial: Writable, modules: Iterable[str]) -> None:
    trial.set_user_attr(RESOLVED_TARGETS_ATTR, sorted(modules))


def rank_pattern(record: Attrs) -> dict[str, int] | None:
    """An AdaLoRA trial's rank per module where it ended."""
    value = _attrs(record).get(RANK_PATTERN_ATTR)
    return None if value is None else {str(k): int(v) for k, v in value.items()}


def set_rank_pattern(trial: Writable, ranks: Mapping[str, int]) -> None:
    trial.set_user_attr(RANK_PATTERN_ATTR, dict(ranks))


def is_greedy(record: Attrs) -> bool:
    """Whether a decode study's trial is its greedy-decoding baseline."""
    return _attrs(record).get(GREEDY_ATTR) is True


def greedy_attrs() -> dict[str, Any]:
    """The user attributes of a decode study's first, greedy trial (enqueued)."""
    return {GREEDY_ATTR: True}


def warm_start_attrs(source: str) -> dict[str, Any]:
    """The user attributes of a trial enqueued from the earlier study ``source``."""
    return {WARM_START_ATTR: source}


def warm_start_source(record: Attrs) -> str | None:
    return _str(record, WARM_START_ATTR)


def enqueued_by(record: Attrs) -> str | None:
    return _str(record, ENQUEUED_BY_ATTR)


def enqueued_attrs(owner: str) -> dict[str, Any]:
    """The user attributes of a trial an owner enqueued."""
    return {ENQUEUED_BY_ATTR: owner}
