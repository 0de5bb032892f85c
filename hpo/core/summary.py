"""A study's summary for ``GET /studies/{name}`` on the request's own connection: the API's
hottest read.

Optuna's storage API opens a session (and a pooled connection, pinged first) per call and
loads whole trials; the summary needs its study id, direction, counts, best trial's number,
value and parameters (and how many trials tie it), the baseline scores and the warm start's
sources. Four small queries on the connection that already checked the token and read the
study's record serve it: every extra checkout costs a ping, and on a busy host a round trip
costs more than the query.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from optuna.distributions import json_to_distribution
from optuna.study import StudyDirection
from sqlalchemy import Connection, or_, select

from hpo.core import records
from hpo.core.errors import StudyBroken
from hpo.core.optuna_tables import studies, study_directions, study_user_attributes, trial_params
from hpo.core.progress import TrialCounts, best_query, trial_counts


@dataclass(frozen=True)
class Best:
    number: int
    value: float
    params: dict[str, Any]
    # COMPLETE trials of the best's value: over 1, the metric saturated (tie-break chose)
    ties: int = 1


@dataclass(frozen=True)
class Summary:
    counts: TrialCounts
    best: Best | None
    baseline: dict[str, float]
    warm_start_from: list[str] | None


def study_summary(conn: Connection, name: str) -> Summary:
    """Counts, best trial, baseline and warm-start sources of the Optuna study ``name``, read
    on ``conn``.

    Raises:
        StudyBroken: The Optuna study is gone (deleted or renamed outside the service).
    """
    study = conn.execute(
        select(studies.c.study_id, study_directions.c.direction)
        .join(study_directions, study_directions.c.study_id == studies.c.study_id)
        .where(studies.c.study_name == name, study_directions.c.objective == 0)
    ).first()
    if study is None:
        raise StudyBroken(
            f"study {name!r} is registered but its Optuna study is gone (deleted or "
            "renamed outside the service, e.g. with optuna-dashboard on the database); "
            f"DELETE /studies/{name} removes the registration so the name can be used again"
        )
    study_id = study.study_id
    counts = trial_counts(conn, study_id)
    best_trial = best_query(study_id, StudyDirection[str(study.direction)]).subquery()
    rows = conn.execute(
        select(
            best_trial.c.number,
            best_trial.c.value,
            best_trial.c.ties,
            trial_params.c.param_name,
            trial_params.c.param_value,
            trial_params.c.distribution_json,
        ).outerjoin(trial_params, trial_params.c.trial_id == best_trial.c.trial_id)
    ).all()
    best = None
    if rows:
        best = Best(
            number=rows[0].number,
            value=rows[0].value,
            ties=rows[0].ties,
            params={
                r.param_name: json_to_distribution(r.distribution_json).to_external_repr(
                    r.param_value
                )
                for r in rows
                if r.param_name is not None
            },
        )
    attr_rows = conn.execute(
        select(study_user_attributes.c.key, study_user_attributes.c.value_json).where(
            study_user_attributes.c.study_id == study_id,
            or_(
                study_user_attributes.c.key.startswith(records.BASELINE_PREFIX, autoescape=True),
                study_user_attributes.c.key == records.WARM_START_SOURCES_ATTR,
            ),
        )
    )
    attrs = {k: json.loads(v) for k, v in attr_rows}
    return Summary(
        counts=counts,
        best=best,
        baseline=records.baseline(attrs),
        warm_start_from=records.warm_start_sources(attrs),
    )
