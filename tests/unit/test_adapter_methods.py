"""Adapter methods and LoRA initialisations as settings: each builds the PEFT config it
names, combinations PEFT refuses (or ignores) are refused at registration naming the field,
the export hands back the matching config, and the simulator searches them like any other
dimension."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from peft import AdaLoraConfig, LoraConfig
from pydantic import ValidationError

from hpo.cli_study import trials_table
from hpo.core.export import best_configuration
from hpo.core.hyperparameters import adalora_phases, peft_config, resolve
from hpo.core.records import RANK_PATTERN_ATTR
from hpo.core.schemas import TrialPublic
from hpo.core.spec import CategoricalDistribution, SearchSpace, SearchSpec, StudySpec
from hpo.simulate import simulate
from tests.specs import minimal_spec

CONFIGS = {"LoraConfig": LoraConfig, "AdaLoraConfig": AdaLoraConfig}


def _built(params: dict[str, Any], steps: int = 100) -> LoraConfig:
    name, kwargs = peft_config(resolve({}, params), steps)
    return CONFIGS[name](**kwargs | {"target_modules": ["q_proj", "v_proj"]})


def test_each_method_builds_the_peft_config_it_names() -> None:
    lora, dora, rslora = (_built({"lora_method": m}) for m in ("lora", "dora", "rslora"))
    assert type(lora) is LoraConfig and not (lora.use_dora or lora.use_rslora)
    assert dora.use_dora and not dora.use_rslora
    assert rslora.use_rslora and not rslora.use_dora
    assert _built({"init_lora_weights": "gaussian"}).init_lora_weights == "gaussian"
    assert lora.init_lora_weights is True  # "default" is PEFT's own
    adalora = _built({"lora_method": "adalora", "lora_r": 8}, steps=200)
    assert isinstance(adalora, AdaLoraConfig)
    # lora_r is the budget (average rank at the end); it starts half as large again
    assert (adalora.target_r, adalora.init_r, adalora.total_step) == (8, 12, 200)
    assert (adalora.tinit, adalora.tfinal) == (20, 40)


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 64, 1000])
def test_adalora_phases_leave_steps_to_allocate_in_at_any_length(steps: int) -> None:
    """Shares that registration accepts give phases PEFT accepts, whatever the data size."""
    for tinit, tfinal in [(0.0, 0.0), (0.45, 0.5), (0.9, 0.0), (0.0, 0.9), (0.1, 0.2)]:
        settings = resolve(
            {"lora_method": "adalora", "adalora_tinit": tinit, "adalora_tfinal": tfinal}, {}
        )
        start, end = adalora_phases(settings, steps)
        assert start < steps - end
        _built(settings | {"adalora_tinit": tinit, "adalora_tfinal": tfinal}, steps)


@pytest.mark.parametrize(
    ("training", "space", "where"),
    [
        (
            {"lora_method": "adalora", "init_lora_weights": "gaussian"},
            None,
            "train.training.init_lora_weights",
        ),
        (
            None,
            {
                "lora_method": {"type": "categorical", "choices": ["lora", "adalora"]},
                "init_lora_weights": {"type": "categorical", "choices": ["default", "gaussian"]},
            },
            "search.space.init_lora_weights",
        ),
        (
            {"init_lora_weights": "orthogonal"},
            {"lora_r": {"type": "int", "low": 4, "high": 6}},
            "search.space.lora_r",
        ),
        ({"init_lora_weights": "orthogonal", "lora_r": 5}, None, "train.training.lora_r"),
        (
            {"lora_method": "adalora", "adalora_tinit": 0.5},
            {"adalora_tfinal": {"type": "float", "low": 0.1, "high": 0.5}},
            "search.space.adalora_tfinal",
        ),
        (
            {"lora_method": "adalora", "adalora_init_r": 4, "lora_r": 8},
            None,
            "train.training.adalora_init_r",
        ),
    ],
)
def test_combinations_peft_refuses_are_refused_naming_the_field(
    training: dict[str, Any] | None, space: dict[str, Any] | None, where: str
) -> None:
    learning_rate = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}
    parts = {"training": training or {}, "space": space or learning_rate}
    with pytest.raises(ValidationError, match=where.replace(".", r"\.")):
        StudySpec.model_validate(minimal_spec("bad", **parts))


def test_the_methods_search_together_with_the_default_space() -> None:
    """The default space (even ranks) takes orthogonal init; adalora takes its defaults."""
    for training in ({"init_lora_weights": "orthogonal"}, {"lora_method": "adalora"}):
        StudySpec.model_validate(minimal_spec("ok", training=training))
    space = {
        "lora_method": {"type": "categorical", "choices": ["lora", "dora", "adalora"]},
        "adalora_tinit": {"type": "float", "low": 0.0, "high": 0.3},
    }
    StudySpec.model_validate(minimal_spec("ok", space=space))


def test_the_export_is_the_config_of_the_trial_method() -> None:
    spec = StudySpec.model_validate(
        minimal_spec(
            "x",
            training={"lora_r": 4, "per_device_train_batch_size": 8},
            space={
                "lora_method": {"type": "categorical", "choices": ["lora", "adalora"]},
                "adalora_tfinal": {"type": "float", "low": 0.0, "high": 0.5},
            },
        )
    )
    trial = optuna.trial.create_trial(
        params={"lora_method": "adalora", "adalora_tfinal": 0.25},
        distributions={
            "lora_method": optuna.distributions.CategoricalDistribution(["lora", "adalora"]),
            "adalora_tfinal": optuna.distributions.FloatDistribution(0.0, 0.5),
        },
        value=1.0,
        user_attrs={"examples_seen": 8 * 40, "lora_target_modules_resolved": ["q_proj"]},
    )
    exported = best_configuration(spec, trial)
    assert exported["peft_config_class"] == "AdaLoraConfig"
    config = AdaLoraConfig(**exported["lora_config"])
    assert (config.total_step, config.tfinal, config.target_r) == (40, 10, 4)
    assert config.target_modules == {"q_proj"}


def test_trials_show_where_the_adalora_budget_went() -> None:
    layer = "model.layers.{}.self_attn.{}_proj"
    ranks = {
        layer.format(0, "q"): 6,
        layer.format(0, "v"): 2,
        layer.format(1, "q"): 3,
        layer.format(1, "v"): 5,
    }
    found = [
        TrialPublic(
            number=n,
            state="complete",
            value=1.0,
            params={},
            intermediate_values={},
            datetime_start=None,
            datetime_complete=None,
            duration_s=None,
            user_attrs=attrs,
        )
        for n, attrs in ((0, {RANK_PATTERN_ATTR: ranks}), (1, {}))
    ]
    table = trials_table("eval_loss", [], found, wide=True)
    column = next(c for c in table.columns if c.header == "ranks")
    assert list(column.cells) == ["q_proj 6,3 v_proj 2,5", ""]
    table = trials_table("eval_loss", [], found)  # in short, without --wide
    column = next(c for c in table.columns if c.header == "ranks")
    assert list(column.cells) == ["mean 4, 0/4 off", ""]


def test_the_simulator_searches_adapter_methods() -> None:
    """The method is one more categorical dimension to the simulator."""
    floors = {"lora": 2.0, "dora": 1.5, "adalora": 1.0}

    class Methods:
        search_space = SearchSpace(lora_method=CategoricalDistribution(choices=list(floors)))

        def curve(self, params: dict[str, Any]) -> list[tuple[float, float]]:
            floor = floors[params["lora_method"]]
            return [(1.0, floor + 1 / (i + 1)) for i in range(4)]

    search = SearchSpec.model_validate(
        {
            "space": Methods.search_space,
            "sampler": {"type": "random", "seed": 0},
            "budget": {"max_trials": 6},
        }
    )
    sim = simulate(search, Methods(), workers=2, seed=0)
    assert len(sim.trials) == 6
    for trial in sim.trials:
        assert trial.value is not None
        assert math.isclose(trial.value, floors[trial.params["lora_method"]] + 0.25)
