"""Transfer from earlier studies beyond the first trials: the consensus ranking, the guard
that measures whether the new study agrees with it, and the sampler that follows it."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

from bench.warm_start import best_peer
from hpo.core.spec import SearchSpace
from hpo.core.transfer import TransferSampler
from hpo.core.warm_start import (
    Ranked,
    SourceStudy,
    agreement,
    consensus_configs,
    consensus_ranking,
    next_transfer,
    transfer_trusted,
)

RATES = [1e-5, 3e-5, 1e-4, 3e-4]
SPACE = SearchSpace.model_validate({"learning_rate": {"type": "categorical", "choices": RATES}})


def _source(name: str, values: list[float], *, minimize: bool = True) -> SourceStudy:
    """Trial i tries RATES[i] and scores values[i]."""
    return SourceStudy(
        name, minimize, [({"learning_rate": r}, v) for r, v in zip(RATES, values, strict=True)]
    )


def _rates(ranking: list[Ranked]) -> list[float]:
    return [r.params["learning_rate"] for r in ranking]


def test_a_configuration_good_everywhere_outranks_one_task_alone_liked() -> None:
    # near's best is 1e-5 (everyone else's worst); 1e-4 is second on near and best elsewhere
    near = _source("near", [1.0, 3.0, 2.0, 4.0])
    others = [_source(f"far{i}", [4.0, 3.0, 1.0, 2.0]) for i in range(3)]
    ranking = consensus_ranking([near, *others], SPACE)
    assert _rates(ranking)[0] == 1e-4
    assert [r.score for r in ranking] == sorted(r.score for r in ranking)
    assert 0.0 <= ranking[0].score <= ranking[-1].score <= 1.0
    # one source alone: its own order, by its own direction
    accuracy = _source("acc", [0.1, 0.4, 0.3, 0.2], minimize=False)
    assert _rates(consensus_ranking([accuracy], SPACE)) == [3e-5, 1e-4, 3e-4, 1e-5]
    assert [c.params for c in consensus_configs([accuracy], SPACE, top_k=2)] == [
        {"learning_rate": 3e-5},
        {"learning_rate": 1e-4},
    ]


def test_the_nearest_source_counts_most() -> None:
    first = _source("first", [1.0, 2.0, 3.0, 4.0])
    second = _source("second", [4.0, 3.0, 2.0, 1.0])
    assert _rates(consensus_ranking([first, second], SPACE))[0] == 1e-5
    assert _rates(consensus_ranking([second, first], SPACE))[0] == 3e-4


def test_agreement_is_the_rank_correlation() -> None:
    assert agreement([(0.0, 1.0), (0.5, 2.0), (1.0, 3.0)]) == pytest.approx(1.0)
    assert agreement([(0.0, 3.0), (0.5, 2.0), (1.0, 1.0)]) == pytest.approx(-1.0)
    assert agreement([(0.0, 1.0), (0.5, 1.0), (1.0, 1.0)]) is None  # nothing to rank
    # ties share their mean rank
    assert agreement([(0.0, 1.0), (0.0, 1.0), (1.0, 2.0)]) == pytest.approx(1.0)


def test_the_guard_trusts_until_enough_results_disagree() -> None:
    agree = [(0.0, 1.0), (0.3, 2.0), (0.6, 3.0), (1.0, 4.0)]
    disagree = [(s, -v) for s, v in agree]
    assert transfer_trusted(disagree[:3], min_pairs=4)  # too few to judge
    assert transfer_trusted(agree, min_pairs=4)
    assert not transfer_trusted(disagree, min_pairs=4)
    assert transfer_trusted(disagree, min_pairs=4, threshold=-math.inf)


def test_next_transfer_takes_the_best_untried_while_trusted() -> None:
    ranking = consensus_ranking([_source("a", [4.0, 3.0, 2.0, 1.0])], SPACE)  # 3e-4 first
    assert next_transfer(ranking, [], [], minimize=True) == {"learning_rate": 3e-4}
    # a failed or running configuration is not proposed again
    tried = [{"learning_rate": 3e-4}, {"learning_rate": 1e-4}]
    assert next_transfer(ranking, [], tried, minimize=True) == {"learning_rate": 3e-5}
    # the new task ranks the other way round: once 2 results disagree, the sampler decides
    done = [({"learning_rate": 3e-4}, 5.0), ({"learning_rate": 1e-5}, 1.0)]
    assert next_transfer(ranking, done, [], minimize=True, min_pairs=2) is None
    # the same values as accuracies agree with the ranking
    assert next_transfer(ranking, done, [], minimize=False, min_pairs=2) == {"learning_rate": 1e-4}
    # blind only: the ranking's next while the study has no result, none from the first on
    running = [{"learning_rate": 3e-4}]
    assert next_transfer(ranking, [], running, minimize=True, blind_only=True) == {
        "learning_rate": 1e-4
    }
    # an earlier trial already started elsewhere, params not yet set, takes 1e-4: pass it over
    assert next_transfer(ranking, [], running, minimize=True, blind_only=True, skip=1) == {
        "learning_rate": 3e-5
    }
    assert next_transfer(ranking, [], running, minimize=True, skip=3) is None
    agreeing = [({"learning_rate": 3e-4}, 1.0)]
    assert next_transfer(ranking, agreeing, [], minimize=True, blind_only=True) is None
    everything = [({"learning_rate": r}, 1.0) for r in RATES]
    assert next_transfer(ranking, everything, [], minimize=True) is None
    assert next_transfer([], [], [], minimize=True) is None


def _objective(trial: optuna.Trial) -> float:
    # the new task's best rate is the lowest: the reverse of the source's ranking
    return math.log10(trial.suggest_categorical("learning_rate", RATES)) + 6


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_the_sampler_follows_the_ranking_then_hands_over() -> None:
    ranking = consensus_ranking([_source("a", [4.0, 3.0, 2.0, 1.0])], SPACE)
    # the wrapped sampler always proposes 1e-5, the ranking's last
    base = optuna.samplers.PartialFixedSampler(
        {"learning_rate": 1e-5}, optuna.samplers.RandomSampler(seed=0)
    )
    study = optuna.create_study(sampler=TransferSampler(base, ranking, min_pairs=2))
    study.enqueue_trial({"learning_rate": 1e-4})  # an enqueued trial runs as queued
    study.optimize(_objective, n_trials=3)
    # enqueued, then the ranking's best untried (3e-4); then the two results disagree
    # (1e-4 better than 3e-4, the ranking says the opposite) and the wrapped sampler decides
    assert [t.params["learning_rate"] for t in study.trials] == [1e-4, 3e-4, 1e-5]
    followed = optuna.create_study(
        sampler=TransferSampler(base, ranking, min_pairs=2, threshold=-math.inf)
    )
    followed.optimize(_objective, n_trials=4)
    assert [t.params["learning_rate"] for t in followed.trials] == [3e-4, 1e-4, 3e-5, 1e-5]


def test_trials_started_together_take_distinct_configurations() -> None:
    ranking = consensus_ranking([_source("a", [4.0, 3.0, 2.0, 1.0])], SPACE)
    sampler = TransferSampler(optuna.samplers.RandomSampler(seed=0), ranking, blind_only=True)
    study = optuna.create_study(sampler=sampler)
    # as workers do: each asks before any has suggested (set) its params
    asked = [study.ask() for _ in range(3)]
    rates = [t.suggest_categorical("learning_rate", RATES) for t in asked]
    assert rates == [3e-4, 1e-4, 3e-5]


def _peer(strategy: str, task_set: str, median: float, reached: float) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "set": task_set,
        "workers": 1,
        "runs": 10,
        "cost_to_target": {
            "0.001": {"median": median, "reached": reached, "reached_runs": round(reached * 10)}
        },
    }


def test_the_benchmarks_best_peer_is_the_cheapest_peer_that_reaches() -> None:
    peers = [
        _peer("ours: tpe", "nmtlc", 0.1, 1.0),
        _peer("gp bo", "nmtlc", 0.3, 1.0),
        _peer("asha", "nmtlc", math.inf, 0.1),
        _peer("bohb", "nmtlc", 0.3, 0.9),
        _peer("asha", "synthetic-mixed", 0.2, 0.8),
    ]
    assert best_peer(peers, "nmtlc", 1)["strategy"] == "gp bo"  # type: ignore[index]
    assert best_peer(peers, "nmtlc", 8) is None
    # the family has no peer rows of its own: its stand-in's
    assert best_peer(peers, "synthetic-family", 1)["strategy"] == "asha"  # type: ignore[index]
    family = [*peers, _peer("gp bo", "synthetic-family", 0.5, 1.0)]
    assert best_peer(family, "synthetic-family", 1)["median"] == 0.5  # type: ignore[index]
