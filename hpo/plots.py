"""``hpo study plot``: best-so-far against cumulative device hours, and param importances."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState, create_trial  # noqa: E402

from hpo.factory import optuna_distributions  # noqa: E402
from hpo.spec import StudySpec  # noqa: E402
from service.schemas import TrialPublic  # noqa: E402


def best_so_far(trials: list[TrialPublic], *, maximize: bool) -> tuple[list[float], list[float]]:
    """Cumulative device hours (in trial order) and the best complete value at each point."""
    hours, best, spent, current = [], [], 0.0, None
    for trial in sorted(trials, key=lambda t: t.number):
        spent += float(trial.user_attrs.get("device_seconds", 0.0)) / 3600
        if trial.state == "complete" and trial.value is not None:
            better = current is None or (
                trial.value > current if maximize else trial.value < current
            )
            current = trial.value if better else current
        if current is not None:
            hours.append(spent)
            best.append(current)
    return hours, best


def importances(spec: StudySpec, trials: list[TrialPublic]) -> dict[str, float]:
    """fANOVA importances over the complete trials (empty with fewer than two)."""
    complete = [t for t in trials if t.state == "complete" and t.value is not None]
    if len(complete) < 2:
        return {}
    distributions = optuna_distributions(spec)
    study = optuna.create_study(direction=spec.objective.direction)
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


def plot_study(spec: StudySpec, trials: list[TrialPublic], out: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    hours, best = best_so_far(trials, maximize=spec.objective.direction == "maximize")
    left.step(hours, best, where="post")
    left.set_xlabel("cumulative device hours")
    left.set_ylabel(f"best {spec.objective.metric}")
    left.set_title(spec.name)
    ranked = importances(spec, trials)
    right.barh(list(ranked)[::-1], list(ranked.values())[::-1])
    right.set_xlabel("importance (fANOVA)")
    right.set_title("parameter importances")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
