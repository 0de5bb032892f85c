"""What readers and writers take: a trial as any layer holds it or a mapping of its user
attributes (``Attrs``), anything with ``set_user_attr`` (``Writable``, ``StoredTrial``); and
the coercions every reader shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from optuna.storages import BaseStorage
from optuna.trial import TrialState

from hpo.core.records.keys import SECONDS_DIGITS


class HasUserAttrs(Protocol):
    """A trial as any layer holds it: ``FrozenTrial``, ``optuna.Trial``, ``TrialPublic``."""

    @property
    def user_attrs(self) -> dict[str, Any]: ...


class HasState(HasUserAttrs, Protocol):
    """A trial with its state: Optuna's ``TrialState``, or its lowercase name (REST)."""

    @property
    def state(self) -> TrialState | str: ...


class Writable(Protocol):
    """Where a writer writes: ``optuna.Trial``, ``FrozenTrial``, ``optuna.Study`` (study
    attributes), ``StoredTrial``."""

    def set_user_attr(self, key: str, value: Any) -> None: ...


Attrs = HasUserAttrs | Mapping[str, Any]


@dataclass(frozen=True)
class StoredTrial:
    """A trial by id in a storage, for writers: what the storage's own sweeps write on."""

    storage: BaseStorage
    trial_id: int

    def set_user_attr(self, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(self.trial_id, key, value)


def _attrs(record: Attrs) -> Mapping[str, Any]:
    return record if isinstance(record, Mapping) else record.user_attrs


def _int(record: Attrs, key: str) -> int | None:
    value = _attrs(record).get(key)
    return None if value is None else int(value)


def _float(record: Attrs, key: str) -> float | None:
    value = _attrs(record).get(key)
    return None if value is None else float(value)


def _str(record: Attrs, key: str) -> str | None:
    value = _attrs(record).get(key)
    return None if value is None else str(value)


def _seconds(value: float) -> float:
    return round(value, SECONDS_DIGITS)
