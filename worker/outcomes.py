"""What a worker does once a trial has ended: log it; finish the study when the trial spent
its budget; queue a trial cut short by a shutdown again, retry a stalled one, tell the
samplers an out-of-memory configuration is infeasible; and fail a study whose trials keep
failing the same way."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial
from sqlalchemy import update

from hpo.core import records, studies
from hpo.core.db import StudyRecord, StudyStatus, session_scope, utcnow
from hpo.core.factory import optuna_distributions
from hpo.core.optuna_tables import study_id
from hpo.core.spec import StudySpec
from worker.liveness import STALLED
from worker.memory import RESOURCES
from worker.objective import WorkerContext

# Failures that would repeat on every try: the same error, or the tenant's own inputs (a file
# refused, work past its deadline, no progress, memory past the worker's limit). A streak of
# them fails the study.
STREAK_REASONS = ("error", "input", "deadline", STALLED, RESOURCES)


def trial_ended(
    ctx: WorkerContext,
    record: StudyRecord,
    spec: StudySpec,
    study: optuna.Study,
    trial: FrozenTrial,
    latency: dict[str, float],
) -> None:
    """Log the trial's end (with the claim's and the tell's ``latency``) and act on it."""
    reason = records.fail_reason(trial)
    ctx.event(
        "trial_end",
        study=spec.name,
        trial=trial.number,
        state=trial.state.name.lower(),
        value=trial.value,
        reason=records.reason(trial),
        setup_s=records.setup_seconds(trial),
        train_s=records.train_seconds(trial),
        **{k: round(v, 4) for k, v in latency.items()},
    )
    if trial.state != TrialState.FAIL:
        finish_if_spent(ctx, record, study)
        return
    if reason == "shutdown":
        study.enqueue_trial(trial.params, user_attrs=records.retry_attrs(trial.number))
    elif reason == STALLED:
        ctx.storage.retry(study, trial)
    elif reason in ("oom", RESOURCES):
        _record_infeasible(spec, study, trial, reason)
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


def _record_infeasible(
    spec: StudySpec, study: optuna.Study, trial: FrozenTrial, reason: str
) -> None:
    """Tell samplers the config does not fit in memory: samplers skip FAILED trials, so
    add a PRUNED copy with a violated constraint (excluded from budget counts)."""
    distributions = optuna_distributions(spec.search)
    infeasible = create_trial(
        state=TrialState.PRUNED,
        params=trial.params,
        distributions={k: distributions[k] for k in trial.params},
        user_attrs=records.infeasible_record_attrs(trial.number, reason=reason),
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
        if not records.is_infeasible_record(t)
        and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    ]
    recent = trials[-limit:]
    errors = {records.error(t) for t in recent}
    if (
        len(recent) == limit
        and all(t.state == TrialState.FAIL for t in recent)
        and all(records.fail_reason(t) in STREAK_REASONS for t in recent)
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
