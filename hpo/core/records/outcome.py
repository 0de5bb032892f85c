"""Outcome: why a trial failed or was pruned, its error, the trial it retries, the
out-of-memory trial an infeasible record stands for, an artifact that could not be stored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpo.core.records.base import Attrs, Writable, _attrs, _int, _str
from hpo.core.records.keys import (
    ARTIFACT_ERROR_SUFFIX,
    ERROR_ATTR,
    FAIL_REASON_ATTR,
    INFEASIBLE_RECORD_ATTR,
    OUTCOME_ATTRS,
    PRUNE_REASON_ATTR,
    RETRIED_FROM_ATTR,
)


def fail_reason(record: Attrs) -> str | None:
    """Why a trial failed: ``oom``, ``shutdown``, ``stalled``, ``stale: ...``, ..."""
    return _str(record, FAIL_REASON_ATTR)


def prune_reason(record: Attrs) -> str | None:
    """Why a trial was pruned or paused, in words."""
    return _str(record, PRUNE_REASON_ATTR)


def reason(record: Attrs) -> str | None:
    """Why a trial ended where it did: its fail reason, else its prune reason."""
    return fail_reason(record) or prune_reason(record)


def error(record: Attrs) -> str | None:
    """The exception a failed trial raised, as ``Type: message``."""
    return _str(record, ERROR_ATTR)


def retried_from(record: Attrs) -> int | None:
    """The number of the failed trial this one retries."""
    return _int(record, RETRIED_FROM_ATTR)


def infeasible_record_of(record: Attrs) -> int | None:
    """The out-of-memory trial an infeasible record stands for."""
    return _int(record, INFEASIBLE_RECORD_ATTR)


def is_infeasible_record(record: Attrs) -> bool:
    """Whether a trial only tells samplers a config is infeasible (not a trial that ran)."""
    return INFEASIBLE_RECORD_ATTR in _attrs(record)


def artifact_error(record: Attrs, kind: str) -> str | None:
    """Why an artifact of ``kind`` (adapter, tensorboard, checkpoint) was not stored."""
    return _str(record, f"{kind}{ARTIFACT_ERROR_SUFFIX}")


def record_failure(trial: Writable, *, reason: str, error: str | None = None) -> None:
    """Why a trial failed, and the error when there is one; set before it is told FAIL."""
    trial.set_user_attr(FAIL_REASON_ATTR, reason)
    if error is not None:
        trial.set_user_attr(ERROR_ATTR, error)


def set_prune_reason(trial: Writable, reason: str) -> None:
    trial.set_user_attr(PRUNE_REASON_ATTR, reason)


def set_artifact_error(trial: Writable, kind: str, error: str) -> None:
    trial.set_user_attr(f"{kind}{ARTIFACT_ERROR_SUFFIX}", error)


def retry_attrs(number: int, carried: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The user attributes of a retry of trial ``number``: ``carried`` (the failed trial's,
    e.g. where its segment pauses) without what it said about its own end."""
    kept = {k: v for k, v in (carried or {}).items() if k not in OUTCOME_ATTRS}
    return {**kept, RETRIED_FROM_ATTR: number}


def infeasible_record_attrs(number: int, *, reason: str) -> dict[str, Any]:
    """The user attributes of the infeasible record of trial ``number``."""
    return {INFEASIBLE_RECORD_ATTR: number, FAIL_REASON_ATTR: reason}
