"""Read-only SQL views of the Optuna tables we aggregate over, and the ids they key on.

Optuna owns this schema; its storage API only loads whole trials, which costs O(trials) per
call. Counting, paging and summing in SQL keeps the worker's per-trial checks and the REST
reads flat as a study grows. Only columns that have been stable since Optuna 2 are named.
"""

from __future__ import annotations

from optuna import Study, Trial
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial
from sqlalchemy import DateTime, column, table

studies = table("studies", column("study_id"), column("study_name"))
trials = table(
    "trials",
    column("trial_id"),
    column("number"),
    column("study_id"),
    column("state"),
    column("datetime_start", DateTime),
)
trial_user_attributes = table(
    "trial_user_attributes", column("trial_id"), column("key"), column("value_json")
)
trial_heartbeats = table("trial_heartbeats", column("trial_id"), column("heartbeat", DateTime))
trial_values = table(
    "trial_values", column("trial_id"), column("objective"), column("value"), column("value_type")
)


def study_id(study: Study | FrozenStudy) -> int:
    """Optuna's row id of a study: it has no public accessor, and our SQL keys on it."""
    return study._study_id  # noqa: SLF001


def trial_id(trial: Trial | FrozenTrial) -> int:
    """Optuna's row id of a trial (numbers restart per study; ids do not)."""
    return trial._trial_id  # noqa: SLF001


study_directions = table(
    "study_directions", column("study_id"), column("direction"), column("objective")
)
study_user_attributes = table(
    "study_user_attributes", column("study_id"), column("key"), column("value_json")
)
trial_params = table(
    "trial_params",
    column("trial_id"),
    column("param_name"),
    column("param_value"),
    column("distribution_json"),
)
trial_intermediate_values = table(
    "trial_intermediate_values", column("trial_id"), column("step"), column("intermediate_value")
)
