"""Warm start's choice of configurations: ranking, mapping into the new space, interleaving."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from hpo.core.spec import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    SearchSpace,
    SearchSpec,
)
from hpo.core.warm_start import SourceStudy, consensus_ranking, snap, warm_start_configs

SPACE = SearchSpace.model_validate(
    {
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "lora_r": {"type": "categorical", "choices": [4, 8, 16]},
    }
)


def _source(name: str, values: list[float], *, minimize: bool = True) -> SourceStudy:
    """Trial i has learning rate (i + 1) * 1e-4 and value values[i]."""
    trials = [({"learning_rate": (i + 1) * 1e-4, "lora_r": 8}, v) for i, v in enumerate(values)]
    return SourceStudy(name, minimize, trials)


def test_the_best_come_first_by_each_sources_direction() -> None:
    loss = _source("loss", [3.0, 1.0, 2.0])
    accuracy = _source("acc", [0.2, 0.9, 0.5], minimize=False)
    assert [c.params["learning_rate"] for c in warm_start_configs([loss], SPACE, top_k=2)] == [
        pytest.approx(2e-4),
        pytest.approx(3e-4),
    ]
    picked = warm_start_configs([accuracy], SPACE, top_k=3)
    assert [c.params["learning_rate"] for c in picked] == pytest.approx([2e-4, 3e-4, 1e-4])


def test_a_saturated_source_ranks_its_ties_by_their_tie_break() -> None:
    """Every trial scored 1.0: the lowest eval_loss ranks first, not the earliest trial; one
    without a tie-break last among the tied."""
    accuracy = _source("sat", [1.0, 1.0, 1.0, 0.5], minimize=False)
    tied = SourceStudy(accuracy.name, False, accuracy.trials, ties=[None, 0.0124, 0.000148, 0.0])
    picked = [c.params["learning_rate"] for c in warm_start_configs([tied], SPACE, top_k=4)]
    assert picked == pytest.approx([3e-4, 2e-4, 1e-4, 4e-4])
    ranked = [r.params["learning_rate"] for r in consensus_ranking([tied], SPACE)]
    assert ranked == pytest.approx([3e-4, 2e-4, 1e-4, 4e-4])


def test_sources_take_turns_and_duplicates_count_once() -> None:
    a = SourceStudy(
        "a",
        True,
        [({"learning_rate": 1e-4, "lora_r": 8}, 1.0), ({"learning_rate": 2e-4, "lora_r": 8}, 2.0)],
    )
    b = SourceStudy(
        "b",
        True,
        [
            ({"learning_rate": 1e-4, "lora_r": 8}, 0.5),  # a's best again
            ({"learning_rate": 5e-4, "lora_r": 16}, 0.7),
        ],
    )
    picked = warm_start_configs([a, b], SPACE, top_k=10)
    assert [(c.source, c.params["learning_rate"]) for c in picked] == [
        ("a", 1e-4),
        ("b", 5e-4),
        ("a", 2e-4),
    ]


def test_params_are_mapped_into_the_new_space() -> None:
    source = SourceStudy(
        "old",
        True,
        [
            ({"learning_rate": 5e-2, "lora_r": 64, "weight_decay": 0.1}, 1.0),  # outside: clipped
            ({"learning_rate": 1e-4, "lora_r": 8}, math.nan),
        ],  # never finished well: skipped
        fixed={"lora_r": 6, "per_device_train_batch_size": 8},
    )
    picked = warm_start_configs([source], SPACE, top_k=5)
    assert [c.params for c in picked] == [{"learning_rate": 1e-3, "lora_r": 16}]
    # a fixed setting fills a searched param; 6 is nearer 8 than 4 on a log scale
    fixed_only = SourceStudy("fixed", True, [({"learning_rate": 1e-4}, 1.0)], fixed={"lora_r": 6})
    assert warm_start_configs([fixed_only], SPACE, top_k=1)[0].params == {
        "learning_rate": 1e-4,
        "lora_r": 8,
    }
    unrelated = SourceStudy("decode", True, [({"temperature": 0.7}, 1.0)])
    assert warm_start_configs([unrelated], SPACE, top_k=3) == []


def test_the_ranking_a_prior_is_fitted_to_drops_values_outside_the_range() -> None:
    """Enqueued warm configurations clip into the space (a trial must run); the consensus
    ranking, which ``PriorTPE`` is fitted to, leaves such a value out instead (clipped, 5e-2
    and 64 would stand for the best at the range's edge: 1e-3 and rank 16); a configuration
    with nothing left drops out."""
    source = SourceStudy(
        "old",
        True,
        [
            ({"learning_rate": 5e-2, "lora_r": 8}, 1.0),
            ({"learning_rate": 2e-4, "lora_r": 64}, 2.0),
            ({"learning_rate": 5e-2, "lora_r": 64}, 3.0),
            ({"learning_rate": 2e-4, "lora_r": 4}, 4.0),
        ],
    )
    assert warm_start_configs([source], SPACE, top_k=1)[0].params == {
        "learning_rate": 1e-3,
        "lora_r": 8,
    }
    ranked = [r.params for r in consensus_ranking([source], SPACE)]
    assert ranked == [
        {"lora_r": 8},
        {"learning_rate": 2e-4},
        {"learning_rate": 2e-4, "lora_r": 4},
    ]


def test_snap_follows_each_distribution() -> None:
    assert snap(0.26, FloatDistribution(low=0.0, high=1.0, step=0.1)) == pytest.approx(0.3)
    assert snap(7, IntDistribution(low=0, high=10, step=5)) == 5
    assert snap(99, IntDistribution(low=0, high=10)) == 10
    assert snap("cosine", CategoricalDistribution(choices=["linear", "cosine"])) == "cosine"
    assert snap("wsd", CategoricalDistribution(choices=["linear", "cosine"])) is None
    assert snap(True, CategoricalDistribution(choices=[1, 2])) is None  # a bool is no number
    assert snap("x", FloatDistribution(low=0.0, high=1.0)) is None


def test_the_spec_option_is_off_by_default_and_checked() -> None:
    assert SearchSpec().warm_start is None
    spec = SearchSpec.model_validate({"warm_start": {"studies": ["a", "b"]}})
    assert spec.warm_start is not None and spec.warm_start.top_k == 3
    assert not spec.warm_start.auto
    auto = SearchSpec.model_validate({"warm_start": {"auto": True}}).warm_start
    assert auto is not None and auto.studies == []
    for bad in (
        {"studies": []},
        {"studies": [], "auto": False},
        {"studies": ["a", "a"]},
        {"studies": ["A/.."]},
        {"studies": ["a"], "top_k": 0},
    ):
        with pytest.raises(ValidationError):
            SearchSpec.model_validate({"warm_start": bad})
