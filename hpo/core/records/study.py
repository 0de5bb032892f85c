"""Study user attributes: owner, objective, fidelity, the untuned model's scores, the warm
start's ranking and sources."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpo.core.records.base import Writable
from hpo.core.records.keys import (
    BASELINE_PREFIX,
    FIDELITY,
    FIDELITY_ATTR,
    OBJECTIVE_ATTR,
    OWNER_ATTR,
    WARM_START_RANKING_ATTR,
    WARM_START_SCORES_ATTR,
    WARM_START_SOURCES_ATTR,
)


def study_attrs(*, owner: str, objective: str) -> dict[str, str]:
    """A new study's user attributes: who owns it, what it optimises, its fidelity axis
    (for people browsing the database with Optuna's own tools)."""
    return {OWNER_ATTR: owner, OBJECTIVE_ATTR: objective, FIDELITY_ATTR: FIDELITY}


def baseline_key(metric: str) -> str:
    return f"{BASELINE_PREFIX}{metric}"


def baseline(study_user_attrs: Mapping[str, Any]) -> dict[str, float]:
    """The untuned model's scores by metric, from a study's user attributes."""
    return {
        key.removeprefix(BASELINE_PREFIX): float(value)
        for key, value in study_user_attrs.items()
        if key.startswith(BASELINE_PREFIX)
    }


def has_baseline(study_user_attrs: Mapping[str, Any]) -> bool:
    """Whether a trial already scored the untuned model (the first trial does)."""
    return any(key.startswith(BASELINE_PREFIX) for key in study_user_attrs)


def set_baseline(study: Writable, metric: str, value: float) -> None:
    study.set_user_attr(baseline_key(metric), value)


def warm_start_ranking_attrs(ranking: list[dict[str, Any]], scores: list[float]) -> dict[str, Any]:
    """A warm-started study's user attributes: the earlier studies' ranked params and their
    consensus scores."""
    return {WARM_START_RANKING_ATTR: ranking, WARM_START_SCORES_ATTR: scores}


def warm_start_ranking(study_user_attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ranked params a warm-started study stored (none for any other study)."""
    ranking = study_user_attrs.get(WARM_START_RANKING_ATTR)
    if not isinstance(ranking, list):
        return []
    return [p for p in ranking if isinstance(p, dict)]


def warm_start_scores(study_user_attrs: Mapping[str, Any], count: int) -> list[float]:
    """The consensus scores of the stored ranking's ``count`` configurations; evenly spaced
    ranks (0 .. 1) where none fit (a study stored before scores were)."""
    scores = study_user_attrs.get(WARM_START_SCORES_ATTR)
    if (
        isinstance(scores, list)
        and len(scores) == count
        and all(isinstance(s, int | float) and not isinstance(s, bool) for s in scores)
    ):
        return [float(s) for s in scores]
    return [i / max(count - 1, 1) for i in range(count)]


def warm_start_sources_attrs(sources: list[str]) -> dict[str, Any]:
    """A warm-started study's user attribute: the studies that seed it, in order."""
    return {WARM_START_SOURCES_ATTR: sources}


def warm_start_sources(study_user_attrs: Mapping[str, Any]) -> list[str] | None:
    """The studies a warm-started study was seeded from (empty: none matched, it started
    cold), or None for a study without warm start."""
    sources = study_user_attrs.get(WARM_START_SOURCES_ATTR)
    if not isinstance(sources, list):
        return None
    return [s for s in sources if isinstance(s, str)]
