"""What a worker does once a trial has ended: log it; finish the study when the trial spent
its budget; queue a trial cut short by a shutdown again, retry a stalled one, tell the
samplers an out-of-memory configuration is infeasible; and fail a study whose trials keep
failing the same way."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial
from sqlalchemy import update

from hpo.core import studies
from hpo.core.db import StudyRecord, StudyStatus, session_scope, utcnow
from hpo.core.factory import optuna_distributions
from hpo.core.optuna_tables import study_id
from hpo.core.progress import INFEASIBLE_RECORD_ATTR, is_record
from hpo.core.spec import StudySpec
from hpo.core.storage import FAIL_REASON_ATTR, RETRIED_FROM_ATTR
from worker.liveness import STALLED
from worker.objective import WorkerContext

# Failures that would repeat on every try: the same error, or the tenant's own inputs (a file
# refused, work past its deadline, no progress). A streak of them fails the study.
STREAK_REASONS = ("error", "input", "deadline", STALLED)


def trial_ended(
    ctx: WorkerContext,
    record: StudyRecord,
    spec: StudySpec,
    study: optuna.Study,
    trial: FrozenTrial,
    latency: dict[str, float],
) -> None:
    """Log the trial's end (with the claim's and the tell's ``latency``) and act on it."""
    reason = trial.user_attrs.get(FAIL_REASON_ATTR)
    ctx.event(
        "trial_end",
        study=spec.name,
        trial=trial.number,
        state=trial.state.name.lower(),
        value=trial.value,
        reason=reason or trial.user_attrs.get("prune_reason"),
        setup_s=trial.user_attrs.get("setup_seconds"),
        train_s=trial.user_attrs.get("train_seconds"),
        **{k: round(v, 4) for k, v in latency.items()},
    )
    if trial.state != TrialState.FAIL:
        finish_if_spent(ctx, record, study)
        return
    if reason == "shutdown":
        study.enqueue_trial(trial.params, user_attrs={RETRIED_FROM_ATTR: trial.number})
    elif reason == STALLED:
        ctx.storage.retry(study, trial)
    elif reason == "oom":
        _record_infeasible(spec, study, trial)
    _check_failure_streak(ctx, record, spec, study)


def finish_if_spent(ctx: WorkerContext, record: StudyRecord, study: optuna.Study) -> None:
    """Mark the study completed when its budget is spent."""
    with session_scope(ctx.sessions) as session:
        fresh = session.get(StudyRecord, record.id)
        reason = fresh and studies.finish_if_spent(
            session,
            ctx.storage,
            record=fresh,
            study_id=study_id(study),
        )
    if reason:
        ctx.event("study_completed", study=record.name, reason=reason)


def _record_infeasible(spec: StudySpec, study: optuna.Study, trial: FrozenTrial) -> None:
    """Tell samplers the config does not fit in memory: samplers skip FAILED trials, so
    add a PRUNED copy with a violated constraint (excluded from budget counts)."""
    distributions = optuna_distributions(spec.search)
    infeasible = create_trial(
        state=TrialState.PRUNED,
        params=trial.params,
        distributions={k: distributions[k] for k in trial.params},
        user_attrs={INFEASIBLE_RECORD_ATTR: trial.number, FAIL_REASON_ATTR: "oom"},
    )
    infeasible.set_constraint("oom", 1.0)
    study.add_trial(infeasible)


def _check_failure_streak(
    ctx: WorkerContext, record: StudyRecord, spec: StudySpec, study: optuna.Study
) -> None:
    limit = spec.search.budget.max_failures_in_a_row
    trials = [
        t
        for t in study.get_trials(deepcopy=False)
        if not is_record(t)
        and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    ]
    recent = trials[-limit:]
    errors = {t.user_attrs.get("error") for t in recent}
    if (
        len(recent) == limit
        and all(t.state == TrialState.FAIL for t in recent)
        and all(t.user_attrs.get(FAIL_REASON_ATTR) in STREAK_REASONS for t in recent)
        and len(errors) == 1
    ):
        reason = f"{limit} trials in a row failed: {errors.pop()}"
        _fail_study(ctx, record, reason)


def _fail_study(ctx: WorkerContext, record: StudyRecord, reason: str) -> None:
    """FAILED, if still RUNNING (a user may have stopped it meanwhile)."""
    with session_scope(ctx.sessions) as session:
        changed = session.execute(
            update(StudyRecord)
            .where(StudyRecord.id == record.id, StudyRecord.status == StudyStatus.RUNNING)
            .values(status=StudyStatus.FAILED, status_reason=reason, updated_at=utcnow())
            .returning(StudyRecord.id)
        ).first()
    if changed is not None:
        ctx.event("study_" + StudyStatus.FAILED, study=record.name, reason=reason)
