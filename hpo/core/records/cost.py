"""Cost: device (and GPU), setup, train, evaluation and generation seconds, examples seen
and trained, tokens seen, peak memory."""

from __future__ import annotations

from hpo.core.records.base import Attrs, Writable, _float, _int, _seconds
from hpo.core.records.keys import (
    DEVICE_SECONDS_ATTR,
    EVAL_SECONDS_ATTR,
    EXAMPLES_SEEN_ATTR,
    EXAMPLES_TRAINED_ATTR,
    GENERATION_SECONDS_ATTR,
    GPU_SECONDS_ATTR,
    PEAK_MEMORY_ATTR,
    SETUP_SECONDS_ATTR,
    TOKENS_SEEN_ATTR,
    TRAIN_SECONDS_ATTR,
)


def device_seconds(record: Attrs) -> float:
    """Seconds the trial held its device (0 before it recorded any): what budgets sum."""
    return _float(record, DEVICE_SECONDS_ATTR) or 0.0


def gpu_seconds(record: Attrs) -> float | None:
    return _float(record, GPU_SECONDS_ATTR)


def setup_seconds(record: Attrs) -> float | None:
    """Seconds before the first training step: model, data, adapter, Trainer."""
    return _float(record, SETUP_SECONDS_ATTR)


def train_seconds(record: Attrs) -> float | None:
    return _float(record, TRAIN_SECONDS_ATTR)


def eval_seconds(record: Attrs) -> float | None:
    return _float(record, EVAL_SECONDS_ATTR)


def generation_seconds(record: Attrs) -> float | None:
    return _float(record, GENERATION_SECONDS_ATTR)


def examples_seen(record: Attrs) -> int | None:
    """Training examples seen, a continuation's earlier segments included: the fidelity."""
    return _int(record, EXAMPLES_SEEN_ATTR)


def examples_trained(record: Attrs) -> int | None:
    """Training examples this segment trained itself (a continuation: only the rest)."""
    return _int(record, EXAMPLES_TRAINED_ATTR)


def tokens_seen(record: Attrs) -> int | None:
    return _int(record, TOKENS_SEEN_ATTR)


def peak_memory_mb(record: Attrs) -> float | None:
    return _float(record, PEAK_MEMORY_ATTR)


def record_device_time(
    trial: Writable, seconds: float, *, gpu: bool, peak_memory_mb: float | None = None
) -> None:
    """What a trial cost its device: seconds (also as GPU seconds on a GPU), peak memory."""
    trial.set_user_attr(DEVICE_SECONDS_ATTR, _seconds(seconds))
    if gpu:
        trial.set_user_attr(GPU_SECONDS_ATTR, _seconds(seconds))
    if peak_memory_mb is not None:
        trial.set_user_attr(PEAK_MEMORY_ATTR, round(peak_memory_mb, 1))


def set_setup_seconds(trial: Writable, seconds: float) -> None:
    trial.set_user_attr(SETUP_SECONDS_ATTR, _seconds(seconds))


def record_progress(
    trial: Writable,
    *,
    train_seconds: float,
    eval_seconds: float | None = None,
    examples_seen: int | None = None,
    examples_trained: int | None = None,
    tokens_seen: int | None = None,
) -> None:
    """How far training got and what it took (None: not measured, left out); a pruned or
    paused trial keeps these too."""
    if examples_seen is not None:
        trial.set_user_attr(EXAMPLES_SEEN_ATTR, examples_seen)
    if examples_trained is not None:
        trial.set_user_attr(EXAMPLES_TRAINED_ATTR, examples_trained)
    if tokens_seen is not None:
        trial.set_user_attr(TOKENS_SEEN_ATTR, tokens_seen)
    trial.set_user_attr(TRAIN_SECONDS_ATTR, _seconds(train_seconds))
    if eval_seconds is not None:
        trial.set_user_attr(EVAL_SECONDS_ATTR, _seconds(eval_seconds))


def set_generation_seconds(trial: Writable, seconds: float) -> None:
    trial.set_user_attr(GENERATION_SECONDS_ATTR, _seconds(seconds))
