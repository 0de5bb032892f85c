"""The study spec and the sampler/pruner factory, without servers: one spec shape for the API,
the worker and the simulator."""

from __future__ import annotations

import json

import optuna
import pytest
from pydantic import ValidationError

from hpo.core.budget import max_trials
from hpo.core.derived import decode_spec, retrain_spec
from hpo.core.errors import SpecError
from hpo.core.factory import (
    NumberedQMCSampler,
    build_pruner,
    build_sampler,
    check_params,
    load_study,
    suggest_params,
)
from hpo.core.spec import DEFAULT_SEARCH_SPACE, SearchSpec, StudySpec
from tests.specs import minimal_spec

GRID = {
    "lora_r": {"type": "categorical", "choices": [4, 8, 16]},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "step": 0.05},
}


def test_a_minimal_spec_gets_the_defaults_and_dumps_only_what_is_set() -> None:
    spec = StudySpec.model_validate(minimal_spec("m", training={"lora_dropout": 0.05}))
    assert spec.search.space.names() == set(DEFAULT_SEARCH_SPACE)
    assert spec.search.sampler.type == "tpe" and spec.search.pruner.type == "none"
    stored = spec.model_dump(mode="json")
    assert stored["train"]["training"] == {"lora_dropout": 0.05}
    assert set(stored["search"]["space"]) == set(DEFAULT_SEARCH_SPACE)
    assert StudySpec.model_validate(json.loads(json.dumps(stored))) == spec


def test_search_knows_nothing_of_models() -> None:
    """The simulator builds a SearchSpec alone: no fake model or dataset."""
    search = SearchSpec.model_validate({"space": GRID, "sampler": {"type": "grid"}})
    assert set(SearchSpec.model_fields) == {
        "space",
        "objective",
        "sampler",
        "pruner",
        "scheduler",
        "budget",
        "warm_start",
    }
    assert max_trials(search) == 9  # the grid's size, below the default budget of 20


@pytest.mark.parametrize(
    ("parts", "where", "why"),
    [
        ({"training": {"lora_r": 8}}, (), "both searched and fixed"),
        ({"sampler": {"type": "grid"}}, ("search",), "finite space"),
        ({"space": {}}, ("search", "space"), "at least 1"),
        ({"objective": {"metric": "eval_accuracy"}}, (), "needs task sequence-classification"),
        (
            {"space": {"lora_r": {"type": "int", "low": 0, "high": 8}}},
            ("search", "space"),
            "lora_r must be >= 1",
        ),
        ({"training": {"warmup_ratio": 1.5}}, ("train", "training", "warmup_ratio"), "0.99"),
    ],
)
def test_invalid_specs_name_the_place(
    parts: dict[str, object], where: tuple[str, ...], why: str
) -> None:
    with pytest.raises(ValidationError) as error:
        StudySpec.model_validate(minimal_spec("bad", **parts))
    found = error.value.errors()
    assert any(e["loc"][: len(where)] == where and why in e["msg"] for e in found), found


def _proposals(search: SearchSpec, offset: int, n: int = 4) -> list[dict[str, object]]:
    study = optuna.create_study(sampler=build_sampler(search, seed_offset=offset))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(suggest_params(trial, search))
        study.tell(trial, 0.0)
    return out


def test_workers_sample_differently_but_grid_and_qmc_share_one_sequence() -> None:
    """A per-worker seed offset keeps random proposals apart; a grid or QMC sequence only
    means the same thing in every worker under the same seed."""
    tpe = SearchSpec.model_validate({"space": GRID, "sampler": {"type": "random", "seed": 1}})
    assert _proposals(tpe, 0) != _proposals(tpe, 1)
    grid = SearchSpec.model_validate({"space": GRID, "sampler": {"type": "grid", "seed": 1}})
    assert _proposals(grid, 0) == _proposals(grid, 1)
    qmc = SearchSpec.model_validate({"sampler": {"type": "qmc", "seed": 1}})
    assert isinstance(build_sampler(qmc), NumberedQMCSampler)
    assert _proposals(qmc, 0) == _proposals(qmc, 1)


def test_qmc_workers_starting_together_take_different_points() -> None:
    """Two workers (one sampler each, one seed) whose trials both sample before either has a
    parameter: Optuna's QMC gave both its random sampler's first draw (a CI run trained one
    configuration twice)."""
    qmc = SearchSpec.model_validate({"sampler": {"type": "qmc", "seed": 3}})
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(storage=storage, sampler=build_sampler(qmc))
    name = first.study_name
    second = optuna.load_study(study_name=name, storage=storage, sampler=build_sampler(qmc))
    trials = [first.ask(), second.ask()]
    for trial in trials:
        assert trial.relative_params  # sampled now, while no trial has parameters
    a, b = (suggest_params(trial, qmc) for trial in trials)
    assert a != b


@pytest.mark.parametrize(
    "kind", ["median", "percentile", "successive_halving", "hyperband", "none"]
)
def test_every_pruner_builds(kind: str) -> None:
    search = SearchSpec.model_validate({"pruner": {"type": kind}})
    assert isinstance(build_pruner(search.pruner), optuna.pruners.BasePruner)


def test_enqueued_configurations_are_checked_against_the_space() -> None:
    search = SearchSpec.model_validate({"space": GRID})
    assert check_params(search, {"lora_r": 8, "weight_decay": 0.05}) == {
        "lora_r": 8,
        "weight_decay": 0.05,
    }
    with pytest.raises(SpecError) as outside:
        check_params(search, {"lora_r": 7})
    assert outside.value.loc == ("params", "lora_r")
    with pytest.raises(SpecError, match="not in the study's search space"):
        check_params(search, {"learning_rate": 1e-4})


def test_load_study_uses_the_named_sampler_and_pruner() -> None:
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="s")
    search = SearchSpec.model_validate(
        {"sampler": {"type": "random"}, "pruner": {"type": "median"}}
    )
    study = load_study("s", search, storage)
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)
    assert isinstance(study.pruner, optuna.pruners.PercentilePruner)


def test_derived_studies_are_valid_specs() -> None:
    """retrain: the best configuration as a one-point grid on all the data; decode: the
    decoding settings of the source's best adapter."""
    source = StudySpec.model_validate(
        minimal_spec(
            "src",
            dataset={"path": "builtin:demo-text", "max_train_examples": 64},
            training={"max_seq_length": 48},
        )
    )
    best = {"learning_rate": 3e-4, "lora_r": 16, "per_device_train_batch_size": 8}
    again = retrain_spec(source, best, name="src-final")
    assert again.train.dataset.max_train_examples is None
    assert max_trials(again.search) == 1
    assert {k: d.values() for k, d in again.search.space.items()} == {
        k: [v] for k, v in best.items()
    }
    decode = decode_spec(source, name="src-decode", metric="exact_match", trials=5)
    assert decode.train.mode == "decode" and decode.train.adapter.study == "src"
    assert decode.train.training.values() == {"max_seq_length": 48}
    assert decode.search.space.names() == {
        "temperature",
        "top_p",
        "repetition_penalty",
        "max_new_tokens",
    }


def test_the_gp_samplers_tpe_fallback_does_not_replay_gps_random_start() -> None:
    """GP hands a trial to TPE while another worker's trial is still being sampled; on one
    seed TPE's first random draw was GP's first, a configuration trained twice."""
    space = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}}
    search = SearchSpec.model_validate({"space": space, "sampler": {"type": "gp", "seed": 3}})
    study = optuna.create_study(sampler=build_sampler(search))
    first = study.ask()  # trial 0: the LoRA prior
    study.tell(first, 0.0)
    by_gp = study.ask()
    unsampled = study.ask()  # RUNNING without parameters: the next ask goes to TPE
    by_tpe = study.ask()
    assert suggest_params(by_gp, search) != suggest_params(by_tpe, search)
    assert not unsampled.params
