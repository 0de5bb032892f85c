"""Which earlier studies seed a warm-started one: named first, then ``auto``'s newest studies
of the same task with a completed trial."""

from __future__ import annotations

from typing import Any

import pytest

from hpo.core.spec import StudySpec
from hpo.core.spec.search import MAX_WARM_START_AUTO
from hpo.core.warm_sources import Candidate, task_key, warm_sources
from tests.specs import minimal_spec


def _spec(name: str = "new", **parts: Any) -> StudySpec:
    return StudySpec.model_validate(minimal_spec(name, **parts))


NEW = _spec(warm_start={"auto": True})
SAME = task_key(NEW)


def _candidate(name: str, id: int, *, completed: bool = True, **parts: Any) -> Candidate:
    return Candidate(name=name, id=id, task=task_key(_spec(name, **parts)), completed=completed)


def test_auto_takes_the_same_tasks_newest_first_with_a_result() -> None:
    candidates = [
        _candidate("old", 1),
        _candidate("no-result", 5, completed=False),
        _candidate("newest", 4),
        _candidate("middle", 2),
    ]
    assert warm_sources(NEW, candidates) == ["newest", "middle", "old"]


@pytest.mark.parametrize(
    "parts",
    [
        {"model": {"name_or_path": "HuggingFaceTB/SmolLM2-135M"}},
        {"dataset": {"path": "data/other.jsonl"}},
        {"dataset": {"path": "builtin:demo-text", "shape": "language_modeling"}},
        {"objective": {"metric": "token_f1"}},
    ],
    ids=["model", "dataset", "shape", "metric"],
)
def test_auto_skips_another_task(parts: dict[str, Any]) -> None:
    other = task_key(_spec("other", **parts))
    assert other != SAME
    assert warm_sources(NEW, [Candidate("other", 2, other, True), _candidate("same", 1)]) == [
        "same"
    ]


def test_a_decode_study_is_another_task_than_its_fine_tune() -> None:
    metric = {"objective": {"metric": "exact_match"}}
    decode = _spec(
        "decode",
        mode="decode",
        adapter={"study": "tuned"},
        space={"temperature": {"type": "float", "low": 0.1, "high": 1.0}},
        **metric,
    )
    assert task_key(decode) != task_key(_spec("tuned", **metric))


def test_the_space_and_budget_do_not_make_another_task() -> None:
    wider = _candidate(
        "wider",
        1,
        space={"learning_rate": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True}},
        budget={"max_trials": 50},
    )
    assert wider.task == SAME
    assert warm_sources(NEW, [wider]) == ["wider"]


def test_named_first_then_auto_without_duplicates_or_itself() -> None:
    spec = _spec(warm_start={"studies": ["b", "a"], "auto": True})
    candidates = [_candidate(n, i) for i, n in enumerate(["a", "c", "new", "b", "d"])]
    assert warm_sources(spec, candidates) == ["b", "a", "d", "c"]


def test_auto_is_bounded_and_a_study_with_no_match_starts_cold() -> None:
    count = 3 * MAX_WARM_START_AUTO
    newest = [f"s{i}" for i in range(count - 1, count - 1 - MAX_WARM_START_AUTO, -1)]
    assert warm_sources(NEW, [_candidate(f"s{i}", i) for i in range(count)]) == newest
    assert warm_sources(NEW, []) == []
    unreadable = Candidate("old-spec", 1, None, True)
    assert warm_sources(NEW, [unreadable, _candidate("late", 2, completed=False)]) == []


def test_without_auto_only_the_named_ones_and_off_means_none() -> None:
    named = _spec(warm_start={"studies": ["a"]})
    assert warm_sources(named, [_candidate("b", 1)]) == ["a"]
    assert warm_sources(_spec(), [_candidate("b", 1)]) == []
