"""The project's exceptions: one root, a few precise children.

The API maps each to a status code in one place (``service/errors.py``).
"""

from __future__ import annotations

from typing import Any


class HPOError(Exception):
    """Root of every error finetune-hpo raises on purpose."""


class SpecError(HPOError):
    """A study spec, or a value checked against one, is invalid.

    Args:
        message: What is wrong.
        loc: Where, as a path into the request body (e.g. ``("search_space", "lora_r")``).
    """

    def __init__(
        self,
        message: str,
        *,
        loc: tuple[str | int, ...] = (),
        kind: str = "spec_error",
        ctx: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.kind = kind  # the 422's ``type``
        self.ctx = ctx  # numbers behind the message, e.g. an estimate and its limit

    def errors(self) -> list[SpecError]:
        """One error per place in the spec."""
        return [self]


class PastLimits(SpecError):
    """A spec asks more than the operator's per-worker limits allow (``hpo.core.estimate``).

    Args:
        errors: One per field that drives a value past its limit, each with the estimate and
            the limit in its ``ctx``.
    """

    def __init__(self, errors: list[SpecError]) -> None:
        messages = dict.fromkeys(e.message for e in errors)
        super().__init__(" ".join(messages), loc=errors[0].loc, kind=errors[0].kind)
        self._errors = errors

    def errors(self) -> list[SpecError]:
        return list(self._errors)


class StudyNotFound(HPOError):
    """No study of that name exists for this owner."""


class StudyConflict(HPOError):
    """The request conflicts with the study's current state (duplicate name, bad transition)."""


class StudyBroken(HPOError):
    """Our registration of a study exists but its Optuna study is gone (deleted or renamed
    outside the service); DELETE removes the registration."""


class QuotaExceeded(HPOError):
    """An owner is at one of their quotas (``hpo.core.owners``).

    Args:
        message: What is at its limit and what frees it.
        quota: The setting's name, e.g. ``max_active_studies_per_owner``.
        limit: Its value.
    """

    def __init__(self, message: str, *, quota: str, limit: int) -> None:
        super().__init__(message)
        self.quota = quota
        self.limit = limit


class TokenNotFound(HPOError):
    """No API token of that name."""


class StorageUnavailable(HPOError):
    """The database cannot be reached right now."""


class DatabaseNotReady(HPOError):
    """The database answers but is not one finetune-hpo can use as it is: its file is
    missing, our tables are missing or behind, or a migration failed."""
