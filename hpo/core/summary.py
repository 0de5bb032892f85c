"""A study's summary for ``GET /studies/{name}`` in one connection: the API's hottest read.

Optuna's storage API opens a session (and a pooled connection, pinged first) per call and
loads whole trials; the summary needs its study id, direction, counts, best trial's number,
value and parameters, and the baseline scores. Six small queries on one connection serve it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from optuna.distributions import json_to_distribution
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from sqlalchemy import select

from hpo.core import records
from hpo.core.errors import StudyBroken
from hpo.core.optuna_tables import studies, study_directions, study_user_attributes, trial_params
from hpo.core.progress import TrialCounts, best_query, trial_counts


@dataclass(frozen=True)
class Best:
    number: int
    value: float
    params: dict[str, Any]


@dataclass(frozen=True)
class Summary:
    counts: TrialCounts
    best: Best | None
    baseline: dict[str, float]


def study_summary(storage: RDBStorage, name: str) -> Summary:
    """Counts, best trial and baseline of the Optuna study ``name``.

    Raises:
        StudyBroken: The Optuna study is gone (deleted or renamed outside the service).
    """
    with storage.engine.connect() as conn:
        study_id = conn.scalar(select(studies.c.study_id).where(studies.c.study_name == name))
        if study_id is None:
            raise StudyBroken(
                f"study {name!r} is registered but its Optuna study is gone (deleted or "
                "renamed outside the service, e.g. with optuna-dashboard on the database); "
                f"DELETE /studies/{name} removes the registration so the name can be used again"
            )
        direction = conn.scalar(
            select(study_directions.c.direction).where(
                study_directions.c.study_id == study_id, study_directions.c.objective == 0
            )
        )
        counts = trial_counts(storage, study_id, connection=conn)
        row = conn.execute(best_query(study_id, StudyDirection[str(direction)])).first()
        best = None
        if row is not None:
            params = conn.execute(
                select(
                    trial_params.c.param_name,
                    trial_params.c.param_value,
                    trial_params.c.distribution_json,
                ).where(trial_params.c.trial_id == row.trial_id)
            )
            best = Best(
                number=row.number,
                value=row.value,
                params={p: json_to_distribution(d).to_external_repr(v) for p, v, d in params},
            )
        attrs = conn.execute(
            select(study_user_attributes.c.key, study_user_attributes.c.value_json).where(
                study_user_attributes.c.study_id == study_id,
                study_user_attributes.c.key.startswith(records.BASELINE_PREFIX, autoescape=True),
            )
        )
        baseline = records.baseline({k: json.loads(v) for k, v in attrs})
    return Summary(counts=counts, best=best, baseline=baseline)
