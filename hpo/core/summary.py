"""A study's record and summary for ``GET /studies/{name}`` on the request's own connection:
the API's hottest read.

Optuna's storage API opens a session (and a pooled connection, pinged first) per call and
loads whole trials; the summary needs its study id, direction, counts, best trial's number,
value and parameters (and how many trials tie it), the baseline scores and the warm start's
sources. Four small queries on the connection that already checked the token serve it (the
record with its Optuna study's id and direction, the counts, the best trial with its
parameters, the study's attributes): every extra checkout costs a ping, and on a busy host a
round trip costs more than the query. The statements are built once, at import: building one
and its cache key costs more than running it.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from optuna.distributions import json_to_distribution
from optuna.study import StudyDirection
from sqlalchemy import Connection, Row, Select, and_, bindparam, or_, select

from hpo.core import records
from hpo.core.db import StudyRecord
from hpo.core.errors import StudyBroken, StudyNotFound
from hpo.core.optuna_tables import studies, study_directions, study_user_attributes, trial_params
from hpo.core.progress import TrialCounts, best_query, trial_counts
from hpo.core.spec import StudySpec


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


# Validated stored specs by study (id, created_at): a spec never changes once registered, and
# validating one costs more than the rest of a read. A new study under an old name, or a
# reused SQLite row id, has another key. Bounded: the oldest entry goes first.
SPEC_CACHE_SIZE = 512
_specs: OrderedDict[tuple[int, dt.datetime], StudySpec] = OrderedDict()
_specs_lock = threading.Lock()


def stored_spec(record: Row[Any] | StudyRecord) -> StudySpec:
    """The validated spec of a study's record (``hpo_studies``' columns, or the ORM row)."""
    key = (record.id, record.created_at)
    with _specs_lock:
        spec = _specs.get(key)
    if spec is None:
        spec = StudySpec.model_validate(record.spec)
        with _specs_lock:
            _specs[key] = spec
            while len(_specs) > SPEC_CACHE_SIZE:
                _specs.popitem(last=False)
    return spec


def _record_query() -> Select[Any]:
    direction = and_(
        study_directions.c.study_id == studies.c.study_id, study_directions.c.objective == 0
    )
    return (
        select(
            StudyRecord.__table__,
            studies.c.study_id.label("optuna_study_id"),
            study_directions.c.direction,
        )
        .outerjoin(studies, studies.c.study_name == StudyRecord.name)
        .outerjoin(study_directions, direction)
        .where(StudyRecord.name == bindparam("name"), StudyRecord.owner == bindparam("owner"))
    )


def _best_with_params(direction: StudyDirection) -> Select[Any]:
    best_trial = best_query(bindparam("study_id"), direction).subquery()
    return select(
        best_trial.c.number,
        best_trial.c.value,
        best_trial.c.ties,
        trial_params.c.param_name,
        trial_params.c.param_value,
        trial_params.c.distribution_json,
    ).outerjoin(trial_params, trial_params.c.trial_id == best_trial.c.trial_id)


_RECORD = _record_query()
_BEST = {direction: _best_with_params(direction) for direction in StudyDirection}
_ATTRS = select(study_user_attributes.c.key, study_user_attributes.c.value_json).where(
    study_user_attributes.c.study_id == bindparam("study_id"),
    or_(
        study_user_attributes.c.key.startswith(records.BASELINE_PREFIX, autoescape=True),
        study_user_attributes.c.key == records.WARM_START_SOURCES_ATTR,
    ),
)


def study_summary(conn: Connection, *, name: str, owner: str) -> tuple[Row[Any], Summary]:
    """The record of ``owner``'s study ``name`` (``hpo_studies``' columns) and its counts,
    best trial, baseline and warm-start sources, read on ``conn``.

    Raises:
        StudyNotFound: No such study, or it belongs to someone else.
        StudyBroken: The Optuna study is gone (deleted or renamed outside the service).
    """
    record = conn.execute(_RECORD, {"name": name, "owner": owner}).first()
    if record is None:
        raise StudyNotFound(f"study {name!r} not found")
    if record.direction is None:
        raise StudyBroken(
            f"study {name!r} is registered but its Optuna study is gone (deleted or "
            "renamed outside the service, e.g. with optuna-dashboard on the database); "
            f"DELETE /studies/{name} removes the registration so the name can be used again"
        )
    study_id = {"study_id": record.optuna_study_id}
    counts = trial_counts(conn, record.optuna_study_id)
    rows = conn.execute(_BEST[StudyDirection[str(record.direction)]], study_id).all()
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
    attrs = {k: json.loads(v) for k, v in conn.execute(_ATTRS, study_id)}
    summary = Summary(
        counts=counts,
        best=best,
        baseline=records.baseline(attrs),
        warm_start_from=records.warm_start_sources(attrs),
    )
    return record, summary
