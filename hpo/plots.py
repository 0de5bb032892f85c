"""``hpo study plot``: best-so-far against cumulative device hours, and param importances."""

from __future__ import annotations

from pathlib import Path

import optuna
from matplotlib.figure import Figure
from optuna.trial import TrialState, create_trial

from hpo.core import records
from hpo.core.factory import optuna_distributions
from hpo.core.progress import beats
from hpo.core.schemas import TrialPublic
from hpo.core.spec import StudySpec


def best_so_far(trials: list[TrialPublic], *, maximize: bool) -> tuple[list[float], list[float]]:
    """Cumulative device hours (in trial order) and the best complete value at each point."""
    hours: list[float] = []
    best: list[float] = []
    spent, current = 0.0, None
    for trial in sorted(trials, key=lambda t: t.number):
        spent += records.device_seconds(trial) / 3600
        value = trial.value if trial.state == "complete" else None
        if value is not None and beats(value, current, minimize=not maximize):
            current = value
        if current is not None:
            hours.append(spent)
            best.append(current)
    return hours, best


def importances(spec: StudySpec, trials: list[TrialPublic]) -> dict[str, float]:
    """fANOVA importances over the complete trials (empty with fewer than two)."""
    complete = [t for t in trials if t.state == "complete" and t.value is not None]
    if len(complete) < 2:
        return {}
    distributions = optuna_distributions(spec.search)
    study = in_memory_study(spec)
    for t in complete:
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                value=t.value,
                params=t.params,
                distributions={k: distributions[k] for k in t.params},
            )
        )
    return optuna.importance.get_param_importances(study)


def plot_study(
    spec: StudySpec, trials: list[TrialPublic], out: Path, *, baseline: float | None = None
) -> Path:
    """``baseline``: the untuned model's score, drawn as a line to beat."""
    fig = Figure(figsize=(11, 4))  # no pyplot: no GUI backend, no global figure state
    left, right = fig.subplots(1, 2)
    hours, best = best_so_far(trials, maximize=spec.search.objective.direction == "maximize")
    left.step(hours, best, where="post", label="best so far")
    if baseline is not None:
        left.axhline(baseline, linestyle="--", color="grey", label="untuned model")
        left.legend()
    left.set_xlabel("cumulative device hours")
    left.set_ylabel(f"best {spec.search.objective.metric}")
    left.set_title(spec.name)
    ranked = importances(spec, trials)
    right.barh(list(ranked)[::-1], list(ranked.values())[::-1])
    right.set_xlabel("importance (fANOVA)")
    right.set_title("parameter importances")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


def in_memory_study(spec: StudySpec) -> optuna.Study:
    """An empty in-memory study in ``spec``'s direction, created without Optuna's log line."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "a new study created in memory"
    try:
        return optuna.create_study(direction=spec.search.objective.direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
