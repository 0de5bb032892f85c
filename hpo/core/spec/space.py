"""The search space: distributions, and the ``search.space`` / ``train.training`` models
generated from the hyperparameter declarations (``hpo.core.hyperparameters``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import ConfigDict, Field, create_model, field_validator, model_validator

from hpo.core.hyperparameters import BY_NAME, HYPERPARAMETERS, SEARCHABLE, Hyperparameter
from hpo.core.spec.base import MAX_GRID_SIZE, FiniteFloat, Scalar, Strict, refuse_unknown


class FloatDistribution(Strict):
    type: Literal["float"] = "float"
    low: FiniteFloat
    high: FiniteFloat
    log: bool = False
    step: FiniteFloat | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FloatDistribution:
        if not self.low < self.high:
            raise ValueError(f"low must be < high, but got low={self.low}, high={self.high}.")
        if self.log and self.low <= 0:
            raise ValueError(f"log=true needs low > 0, but got low={self.low}.")
        if self.log and self.step is not None:
            raise ValueError("step and log=true cannot be used together.")
        if self.step is not None:
            n = (self.high - self.low) / self.step
            if n > MAX_GRID_SIZE or abs(n - round(n)) > 1e-8 * max(1.0, n):
                raise ValueError(
                    f"step must divide high - low into at most {MAX_GRID_SIZE} steps, "
                    f"but got step={self.step} for [{self.low}, {self.high}]."
                )
        return self

    def values(self) -> list[float] | None:
        """The finite set of values, or None for a continuous range."""
        if self.step is None:
            return None
        n = round((self.high - self.low) / self.step)
        return [self.low + i * self.step for i in range(n + 1)]


class IntDistribution(Strict):
    type: Literal["int"] = "int"
    low: int = Field(ge=-(10**9), le=10**9)
    high: int = Field(ge=-(10**9), le=10**9)
    step: int = Field(default=1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntDistribution:
        if not self.low < self.high:
            raise ValueError(f"low must be < high, but got low={self.low}, high={self.high}.")
        if self.log and self.low <= 0:
            raise ValueError(f"log=true needs low > 0, but got low={self.low}.")
        if self.log and self.step != 1:
            raise ValueError(f"log=true needs step=1, but got step={self.step}.")
        if (self.high - self.low) % self.step:
            raise ValueError(
                f"step must divide high - low, but got step={self.step} for "
                f"[{self.low}, {self.high}]."
            )
        return self

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


class CategoricalDistribution(Strict):
    type: Literal["categorical"] = "categorical"
    choices: list[Any] = Field(min_length=1, max_length=256)

    @field_validator("choices")
    @classmethod
    def _check_choices(cls, choices: list[Any]) -> list[Scalar]:
        for choice in choices:
            if not isinstance(choice, bool | int | float | str | None):
                raise ValueError(
                    "choices must be JSON scalars (string, number, boolean or null), "
                    f"but got {choice!r}."
                )
            if isinstance(choice, float) and not math.isfinite(choice):
                raise ValueError(f"choices must be finite, but got {choice}.")
            if isinstance(choice, str) and len(choice) > 256:
                raise ValueError("choices must be strings of at most 256 characters.")
        keys = [(type(c).__name__, c) for c in choices]
        if len(set(keys)) != len(keys):
            raise ValueError(f"choices must be unique, but got {choices}.")
        return choices

    def values(self) -> list[Scalar]:
        return list(self.choices)


Distribution = Annotated[
    FloatDistribution | IntDistribution | CategoricalDistribution, Field(discriminator="type")
]


# --- the hyperparameters (declared in hpo.core.hyperparameters) ------------------------------


DEFAULT_SEARCH_SPACE: dict[str, Any] = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 5e-4, "log": True},
    "per_device_train_batch_size": {"type": "categorical", "choices": [4, 8, 16, 32]},
    "num_train_epochs": {"type": "int", "low": 1, "high": 3},
    "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "lora_r": {"type": "categorical", "choices": [4, 8, 16, 32, 64]},
}


def check_distribution(hp: Hyperparameter, dist: Distribution) -> None:
    """Raise ValueError when ``dist`` can produce a value that ``hp`` does not accept."""
    if isinstance(dist, CategoricalDistribution):
        candidates: list[Any] = list(dist.choices)
    elif hp.kind is str or hp.kind is bool:
        raise ValueError(f"{hp.name} takes a categorical distribution.")
    elif hp.kind is int and isinstance(dist, FloatDistribution):
        raise ValueError(f"{hp.name} is an integer: use type 'int' or 'categorical'.")
    else:
        candidates = [dist.low, dist.high]
    for value in candidates:
        problem = hp.check(value)
        if problem:
            raise ValueError(f"{hp.name} {problem}.")


class _Settings(Strict):
    """Common behaviour of the models generated from the hyperparameter declarations: unset
    entries are None and left out of dumps; iterate the set ones with ``items()``."""

    def items(self) -> list[tuple[str, Any]]:
        return [(k, v) for k, v in self.__dict__.items() if v is not None]

    def names(self) -> set[str]:
        return {k for k, _ in self.items()}

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __len__(self) -> int:
        return len(self.items())


class _SearchSpaceBase(_Settings):
    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if isinstance(data, dict):
            refuse_unknown("hyperparameter", data, SEARCHABLE)
        return data

    @model_validator(mode="after")
    def _within_bounds(self) -> _SearchSpaceBase:
        if not self.items():
            raise ValueError("the search space needs at least 1 hyperparameter.")
        for name, dist in self.items():
            check_distribution(BY_NAME[name], dist)
        return self

    def distributions(self) -> dict[str, Distribution]:
        return dict(self.items())


class _TrainingBase(_Settings):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if isinstance(data, dict):
            refuse_unknown("training setting", data, BY_NAME)
        return data

    def values(self) -> dict[str, Any]:
        return dict(self.items())


def _unset(value: Any) -> bool:
    return value is None


def _value_type(hp: Hyperparameter) -> Any:
    """The pydantic type of a fixed value of ``hp``, with its bounds."""
    if hp.kind is str:
        return Literal[hp.choices]
    if hp.kind is bool:
        return bool
    bounds: dict[str, Any] = {"le": hp.high}
    bounds["ge" if hp.low_inclusive else "gt"] = hp.low
    if hp.kind is float:
        bounds["allow_inf_nan"] = False
    return Annotated[hp.kind, Field(**{k: v for k, v in bounds.items() if v is not None})]


if TYPE_CHECKING:  # the generated models, as type checkers see them

    class SearchSpace(_SearchSpaceBase): ...

    class TrainingSettings(_TrainingBase): ...

else:
    SearchSpace = create_model(
        "SearchSpace",
        __base__=_SearchSpaceBase,
        __doc__="Each searched hyperparameter with its distribution; the others are fixed.",
        **{
            hp.name: (Distribution | None, Field(None, description=hp.help, exclude_if=_unset))
            for hp in HYPERPARAMETERS
            if hp.searchable
        },
    )
    TrainingSettings = create_model(
        "TrainingSettings",
        __base__=_TrainingBase,
        __doc__="Settings fixed for every trial; a study neither searches nor fixes the rest "
        "(they keep their defaults).",
        **{
            hp.name: (
                _value_type(hp) | None,
                Field(None, description=f"{hp.help} Default: {hp.default}.", exclude_if=_unset),
            )
            for hp in HYPERPARAMETERS
        },
    )


def grid_size(space: _SearchSpaceBase) -> int | None:
    """Number of points in the space's grid, or None when a dimension is continuous."""
    size = 1
    for _, dist in space.items():
        values = dist.values()
        if values is None:
            return None
        size *= len(values)
    return size
