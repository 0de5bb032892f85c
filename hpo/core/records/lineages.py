"""Lineage: PBT's member slot and exploit lineage, the value a continuation resumed with and
the first training loss its divergence check compares with."""

from __future__ import annotations

from typing import Any

from hpo.core.records.base import Attrs, Writable, _attrs, _float, _int
from hpo.core.records.keys import INITIAL_LOSS_ATTR, LINEAGE_ATTR, RESUMED_VALUE_ATTR, SLOT_ATTR


def slot(record: Attrs) -> int | None:
    """The PBT member a segment belongs to."""
    return _int(record, SLOT_ATTR)


def lineage(record: Attrs) -> dict[str, Any] | None:
    """After a PBT exploit: ``{"parent", "step", "perturbations"}`` (``pbt.Lineage``)."""
    value = _attrs(record).get(LINEAGE_ATTR)
    return None if value is None else dict(value)


def resumed_value(record: Attrs) -> float | None:
    """A continuation's objective on the state it loaded, before any step."""
    return _float(record, RESUMED_VALUE_ATTR)


def initial_train_loss(record: Attrs) -> float | None:
    """The first finite training loss: a continuation's divergence check compares with it."""
    return _float(record, INITIAL_LOSS_ATTR)


def set_resumed_value(trial: Writable, value: float) -> None:
    trial.set_user_attr(RESUMED_VALUE_ATTR, value)


def set_initial_train_loss(trial: Writable, loss: float) -> None:
    trial.set_user_attr(INITIAL_LOSS_ATTR, loss)
