"""Read-only SQL views of the Optuna tables we aggregate over.

Optuna owns this schema; its storage API only loads whole trials, which costs O(trials) per
call. Counting, paging and summing in SQL keeps the worker's per-trial checks and the REST
reads flat as a study grows. Only columns that have been stable since Optuna 2 are named.
"""

from __future__ import annotations

from sqlalchemy import column, table

studies = table("studies", column("study_id"), column("study_name"))
trials = table(
    "trials",
    column("trial_id"),
    column("number"),
    column("study_id"),
    column("state"),
    column("datetime_start"),
)
trial_user_attributes = table(
    "trial_user_attributes", column("trial_id"), column("key"), column("value_json")
)
trial_heartbeats = table("trial_heartbeats", column("trial_id"), column("heartbeat"))
trial_values = table(
    "trial_values", column("trial_id"), column("objective"), column("value"), column("value_type")
)
