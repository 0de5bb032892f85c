"""Study operations: our row and Optuna's study kept in step. The API, CLI and demo call these.

Names are global (Optuna study names are): registering a taken name is a conflict whoever
holds it, and the answer does not say who.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState
from pydantic import ValidationError
from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hpo.core import artifacts, records
from hpo.core.budget import check_trial_seconds, decision_now, spent_reason, trial_cap
from hpo.core.db import StudyRecord, StudyStatus, utcnow
from hpo.core.errors import SpecError, StudyBroken, StudyConflict, StudyNotFound
from hpo.core.factory import build_pruner, build_sampler
from hpo.core.optuna_tables import studies as optuna_studies
from hpo.core.optuna_tables import trial_id
from hpo.core.optuna_tables import trials as optuna_trials
from hpo.core.owners import check_study_quota
from hpo.core.paths import check_spec_paths
from hpo.core.preflight import check_allocation, check_inputs
from hpo.core.progress import best_trial, trial_counts
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec
from hpo.core.warm_sources import AUTO_CANDIDATES, Candidate, TaskKey, task_key, warm_sources
from hpo.core.warm_start import (
    RANKING_LIMIT,
    Ranked,
    SourceStudy,
    WarmConfig,
    consensus_ranking,
    warm_start_configs,
)

# Which status a transition may start from.
TRANSITIONS: dict[str, tuple[StudyStatus, ...]] = {
    StudyStatus.PAUSED: (StudyStatus.RUNNING,),
    StudyStatus.RUNNING: (StudyStatus.PAUSED,),
    StudyStatus.STOPPED: (StudyStatus.RUNNING, StudyStatus.PAUSED),
}


def create_study(
    session: Session, storage: RDBStorage, *, spec: StudySpec, owner: str, settings: Settings
) -> StudyRecord:
    """``check_spec`` then ``register_study``: for callers that own their session."""
    check_spec(spec, settings)
    return register_study(session, storage, spec=spec, owner=owner, settings=settings)


def check_spec(spec: StudySpec, settings: Settings) -> None:
    """What registration checks without the database: paths, the files they name, the search.

    It reads files, so the API runs it under a deadline and before it opens a session.

    Raises:
        SpecError: The spec points outside the allowed roots, or at data or a model that
            cannot be read as the spec says, or its trials would allocate past the
            operator's limits (PastLimits).
    """
    check_spec_paths(spec, settings)
    check_allocation(spec, settings)  # before the files: it reads only the model's config
    check_inputs(spec, settings)
    check_trial_seconds(spec, settings)
    build_sampler(spec.search)
    build_pruner(spec.search.pruner)


def register_study(
    session: Session, storage: RDBStorage, *, spec: StudySpec, owner: str, settings: Settings
) -> StudyRecord:
    """Register a checked ``spec`` and create its Optuna study, both or neither; commits.

    Raises:
        SpecError: A decode study names an adapter study this owner cannot use, or the warm
            start names a study this owner does not have.
        StudyConflict: The name is taken (by any owner: Optuna study names are global).
        QuotaExceeded: The owner has ``max_active_studies_per_owner`` active studies.
    """
    check_study_quota(session, owner=owner, settings=settings)
    if session.scalar(select(StudyRecord.id).where(StudyRecord.name == spec.name)) is not None:
        raise StudyConflict(f"a study named {spec.name!r} already exists")
    adapter = _pinned_adapter(session, storage, spec, owner) if spec.train.adapter else None
    warm, ranking, warm_from = _warm_start(session, storage, spec, owner)
    # Optuna's study first: SQLite allows one writer, so our row cannot stay flushed
    # while Optuna writes through its own connection. Undo Optuna's half if ours fails.
    direction = StudyDirection[spec.search.objective.direction.upper()]
    try:
        study_id = storage.create_new_study([direction], spec.name)
    except DuplicatedStudyError as exc:
        raise StudyConflict(f"a study named {spec.name!r} already exists") from exc
    record = StudyRecord(
        name=spec.name,
        owner=owner,
        spec=spec.model_dump(mode="json"),
        status=StudyStatus.RUNNING,
        adapter_artifact_id=adapter,
        trial_cap=trial_cap(spec.search),
    )
    try:
        attrs = records.study_attrs(owner=owner, objective=spec.search.objective.metric)
        if ranking:
            attrs |= records.warm_start_ranking_attrs(
                [r.params for r in ranking], [r.score for r in ranking]
            )
        if warm_from is not None:
            attrs |= records.warm_start_sources_attrs(warm_from)
        for key, value in attrs.items():
            storage.set_study_user_attr(study_id, key, value)
        session.add(record)
        session.commit()
    except IntegrityError as exc:
        storage.delete_study(study_id)
        raise StudyConflict(f"a study named {spec.name!r} already exists") from exc
    except BaseException:
        storage.delete_study(study_id)
        raise
    study = optuna.load_study(study_name=spec.name, storage=storage)
    with warnings.catch_warnings():  # experimental in Optuna; it only names the axes
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([spec.search.objective.metric])  # optuna-dashboard's axes
    if spec.train.mode == "decode":
        study.enqueue_trial({}, user_attrs=records.greedy_attrs())
    for config in warm:  # enqueued: every worker and every sampler runs them first
        study.enqueue_trial(config.params, user_attrs=records.warm_start_attrs(config.source))
    return record


def _warm_start(
    session: Session, storage: RDBStorage, spec: StudySpec, owner: str
) -> tuple[list[WarmConfig], list[Ranked], list[str] | None]:
    """The configurations ``search.warm_start`` says to try first, the earlier studies'
    consensus ranking for the trials that start before any result, and the studies that seed
    it (``hpo.core.warm_sources``; None when warm start is off, empty when ``auto`` found no
    study of the same task: the study starts cold).

    Raises:
        SpecError: A named study is not one of this owner's.
    """
    warm = spec.search.warm_start
    if warm is None:
        return [], [], None
    candidates = _auto_candidates(session, owner) if warm.auto else []
    names = warm_sources(spec, candidates)
    sources = []
    for i, name in enumerate(names):
        try:
            record = get_study(session, name=name, owner=owner)
        except StudyNotFound:  # an automatic one only if deleted since it was chosen
            named = i < len(warm.studies)
            loc = ("search", "warm_start", *(("studies", i) if named else ("auto",)))
            raise SpecError(f"you have no study named {name!r}.", loc=loc) from None
        source = StudySpec.model_validate(record.spec)
        done = storage.get_all_trials(
            optuna_study_id(storage, record), deepcopy=False, states=(TrialState.COMPLETE,)
        )
        sources.append(
            SourceStudy(
                name=name,
                minimize=source.search.objective.direction == "minimize",
                trials=[(t.params, t.value) for t in done if t.value is not None],
                fixed=source.train.training.values(),
                ties=[records.tie_break(t) for t in done if t.value is not None],
            )
        )
    top_k = min(warm.top_k, spec.search.budget.max_trials)  # never queue past the budget
    ranking = consensus_ranking(sources, spec.search.space)[:RANKING_LIMIT]
    return (
        warm_start_configs(sources, spec.search.space, top_k=top_k),
        ranking,
        names,
    )


def _auto_candidates(session: Session, owner: str) -> list[Candidate]:
    """The owner's ``AUTO_CANDIDATES`` newest studies: a walk down the ``(owner, id)`` index
    that stops there, and one EXISTS probe per study for a completed trial."""
    rows = session.execute(
        select(StudyRecord.id, StudyRecord.name, StudyRecord.spec)
        .where(StudyRecord.owner == owner)
        .order_by(StudyRecord.id.desc())
        .limit(AUTO_CANDIDATES)
    ).all()
    if not rows:
        return []
    completed = exists().where(
        optuna_trials.c.study_id == optuna_studies.c.study_id,
        optuna_trials.c.state == TrialState.COMPLETE.name,
    )
    with_result = set(
        session.scalars(
            select(optuna_studies.c.study_name).where(
                optuna_studies.c.study_name.in_([r.name for r in rows]), completed
            )
        )
    )
    return [
        Candidate(name=r.name, id=r.id, task=_task(r.spec), completed=r.name in with_result)
        for r in rows
    ]


def _task(stored: dict[str, Any]) -> TaskKey | None:
    try:
        return task_key(StudySpec.model_validate(stored))
    except ValidationError:  # a spec an older release stored: not a candidate, not an error
        return None


def _pinned_adapter(session: Session, storage: RDBStorage, spec: StudySpec, owner: str) -> str:
    """The artifact id of the best adapter of the study a decode study names (same owner).

    Raises:
        SpecError: No such study of this owner, another base model, or no stored adapter.
    """
    assert spec.train.adapter is not None
    loc = ("train", "adapter", "study")
    name = spec.train.adapter.study
    try:
        source = get_study(session, name=name, owner=owner)
    except StudyNotFound:
        raise SpecError(f"you have no study named {name!r}.", loc=loc) from None
    source_model = StudySpec.model_validate(source.spec).train.model.name_or_path
    if source_model != spec.train.model.name_or_path:
        raise SpecError(
            f"study {name!r} trained adapters for {source_model!r}, not for "
            f"{spec.train.model.name_or_path!r}.",
            loc=loc,
        )
    best = best_trial(storage, optuna_study_id(storage, source))
    stored = best and artifacts.recorded(session, study_id=source.id, trial_id=trial_id(best))
    if not stored:
        raise SpecError(f"study {name!r} has no stored adapter of a best trial yet.", loc=loc)
    return stored.artifact_id


def get_study(session: Session, *, name: str, owner: str | None) -> StudyRecord:
    """The study ``name``; ``owner=None`` skips the ownership check (workers).

    Raises:
        StudyNotFound: No such study, or it belongs to someone else.
    """
    query = select(StudyRecord).where(StudyRecord.name == name)
    if owner is not None:
        query = query.where(StudyRecord.owner == owner)
    record = session.scalar(query)
    if record is None:
        raise StudyNotFound(f"study {name!r} not found")
    return record


def optuna_study_id(storage: RDBStorage, record: StudyRecord) -> int:
    """The id of the Optuna study behind our registration.

    Raises:
        StudyBroken: The Optuna study is gone (deleted or renamed outside the service).
    """
    try:
        return storage.get_study_id_from_name(record.name)
    except KeyError:
        raise StudyBroken(
            f"study {record.name!r} is registered but its Optuna study is gone (deleted or "
            f"renamed outside the service, e.g. with optuna-dashboard on the database); "
            f"DELETE /studies/{record.name} removes the registration so the name can be used "
            "again"
        ) from None


def list_studies(
    session: Session, *, owner: str, offset: int, limit: int
) -> tuple[list[StudyRecord], int]:
    where = StudyRecord.owner == owner
    count = session.scalar(select(func.count()).select_from(StudyRecord).where(where)) or 0
    rows = session.scalars(
        select(StudyRecord).where(where).order_by(StudyRecord.id).offset(offset).limit(limit)
    )
    return list(rows), count


def set_status(
    session: Session, *, record: StudyRecord, status: StudyStatus, reason: str | None = None
) -> StudyRecord:
    """Move a study to ``status`` if its current status allows it.

    Raises:
        StudyConflict: The transition is not allowed from the current status.
    """
    allowed = TRANSITIONS.get(status, ())
    if record.status not in allowed:
        raise StudyConflict(
            f"cannot move study {record.name!r} from {record.status} to {status}; "
            f"allowed from {[str(s) for s in allowed]}"
        )
    record.status = status
    record.status_reason = reason
    session.flush()
    return record


def finish_if_spent(
    session: Session, storage: RDBStorage, *, record: StudyRecord, study_id: int
) -> str | None:
    """Mark a running study completed once its budget is spent and nothing runs; the reason.

    Whoever notices first (a worker after its trial, or the API on a read) settles it, so the
    status follows the budget even when the last worker exits on its own ``--max-trials``.
    """
    if record.status != StudyStatus.RUNNING:
        return None
    counts = trial_counts(storage, study_id)
    spec = StudySpec.model_validate(record.spec)
    reason = spent_reason(storage, record, spec, counts, decision_now(storage, record, spec))
    if reason is None or counts.running:
        return None
    changed = session.execute(
        update(StudyRecord)
        .where(StudyRecord.id == record.id, StudyRecord.status == StudyStatus.RUNNING)
        .values(status=StudyStatus.COMPLETED, status_reason=reason, updated_at=utcnow())
        .returning(StudyRecord.id)
    ).first()
    session.refresh(record)
    return reason if changed is not None else None


def delete_study(
    session: Session, storage: RDBStorage, *, record: StudyRecord, settings: Settings
) -> None:
    """Remove the study's artifacts, its Optuna study with its trials, then our row.

    In this order a failure leaves our row, so the DELETE can be repeated.
    """
    artifacts.remove_study_artifacts(settings, session, study_id=record.id)
    with contextlib.suppress(KeyError):  # Optuna's half may already be gone
        storage.delete_study(storage.get_study_id_from_name(record.name))
    session.delete(record)
    session.flush()


def enqueue_trial(
    storage: RDBStorage,
    *,
    record: StudyRecord,
    params: dict[str, Any],
    user_attrs: dict[str, Any],
) -> None:
    """Queue a configuration to be tried before the sampler proposes new ones.

    Raises:
        StudyBroken: The Optuna study is gone.
    """
    optuna_study_id(storage, record)
    study = optuna.load_study(study_name=record.name, storage=storage)
    study.enqueue_trial(params, user_attrs=user_attrs)
