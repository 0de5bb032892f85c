"""The first configuration: the LoRA prior snapped into the space, else the middle."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo.core.factory import build_sampler, load_study, suggest_params
from hpo.core.initial import LORA_PRIOR, first_value
from hpo.core.spec import SearchSpec
from hpo.core.untried import UntriedSampler


def test_known_lora_settings_snap_to_the_nearest_choice_on_a_log_scale() -> None:
    lrs = CategoricalDistribution([2e-5, 2e-4, 1e-3])
    assert first_value("learning_rate", lrs, {}) == 2e-4  # 2x above 1e-4 beats 5x below
    assert first_value("lora_r", CategoricalDistribution([64, 4, 8]), {}) == 8
    assert first_value("learning_rate", FloatDistribution(1e-6, 1e-2, log=True), {}) == 1e-4


def test_a_prior_value_outside_the_range_is_dropped_not_clipped() -> None:
    """Clipped, 1e-4 became the range's lowest rate (NMTLC: trial 0 the worst rate of every
    task); dropped, the parameter starts in the middle like any other."""
    above = FloatDistribution(3e-4, 1e-2, log=True)
    assert first_value("learning_rate", above, {}) == pytest.approx((3e-4 * 1e-2) ** 0.5)
    assert first_value("learning_rate", CategoricalDistribution([3e-4, 1e-3, 3e-3]), {}) == 1e-3
    assert first_value("lora_r", CategoricalDistribution([32, 64, 128]), {}) == 64
    assert first_value("lora_r", IntDistribution(1, 9), {}) == 5
    # alpha follows the rank chosen: 2 x 16 = 32 lies outside 1..9, so the middle
    assert first_value("lora_alpha", IntDistribution(1, 9), {"lora_r": 16}) == 5


def test_a_searched_adapter_method_starts_as_plain_lora() -> None:
    methods = CategoricalDistribution(["dora", "adalora", "lora", "rslora"])
    assert first_value("lora_method", methods, {}) == "lora"
    assert first_value("lora_method", CategoricalDistribution(["dora", "rslora"]), {}) == "dora"


def test_alpha_is_twice_the_rank_chosen() -> None:
    alphas = IntDistribution(8, 256)
    assert first_value("lora_alpha", alphas, {"lora_r": 64}) == 128
    assert first_value("lora_alpha", alphas, {}) == 2 * LORA_PRIOR["lora_r"]


def test_other_parameters_start_in_the_middle() -> None:
    assert (
        first_value("per_device_train_batch_size", CategoricalDistribution([64, 8, 32, 16]), {})
        == 16
    )
    assert (
        first_value(
            "lr_scheduler_type", CategoricalDistribution(["cosine", "linear", "constant"]), {}
        )
        == "linear"
    )
    assert first_value("weight_decay", FloatDistribution(0.0, 0.1, step=0.025), {}) == 0.05
    assert first_value("warmup_steps", IntDistribution(1, 100, log=True), {}) == 10


@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_the_model_based_samplers_start_at_the_prior_and_then_search(sampler: str) -> None:
    search = SearchSpec.model_validate(
        {
            "space": {
                "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                "lora_r": {"type": "categorical", "choices": [4, 16, 64]},
            },
            "sampler": {"type": sampler, "seed": 1},
        }
    )
    assert isinstance(build_sampler(search), UntriedSampler)
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="s")
    study = load_study("s", search, storage)
    firsts = []
    for _ in range(3):
        trial = study.ask()
        firsts.append(suggest_params(trial, search))
        study.tell(trial, 1.0)
    assert firsts[0] == {"learning_rate": 1e-4, "lora_r": 16}
    assert firsts[1] != firsts[0] and firsts[2] != firsts[0]
