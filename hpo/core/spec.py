"""The study spec: one set of pydantic models shared by the API, the worker and the simulator.

A spec is strict (unknown keys are rejected), self-checking (cross-field rules run after
init) and stored as ``model_dump(mode="json")``. Importing this module must stay cheap: no
FastAPI, no torch, no transformers.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from pathlib import PurePath
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from hpo.core.hyperparameters import BY_NAME, HYPERPARAMETERS, SEARCHABLE, Hyperparameter
from hpo.core.patterns import MAX_PATTERN_CHARS, compile_pattern

Scalar = bool | int | float | str | None
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
PATH_PATTERN = r"^[^\x00]+$"  # no NUL: the OS refuses it in any path
MAX_TRIALS = 100_000
MAX_GRID_SIZE = 100_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- search-space distributions ------------------------------------------------------------


class FloatDistribution(_Strict):
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


class IntDistribution(_Strict):
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


class CategoricalDistribution(_Strict):
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


def _unknown(kind: str, names: Iterable[str], known: Iterable[str]) -> None:
    unknown = sorted(set(names) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown {kind} {unknown[0]!r}; {hint}known ones are {sorted(known)}.")


class _Settings(_Strict):
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
            _unknown("hyperparameter", data, SEARCHABLE)
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
            _unknown("training setting", data, BY_NAME)
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


# --- the parts of a spec ---------------------------------------------------------------------


BUILTIN_PREFIX = "builtin:"
# Built locally by the worker (worker/builtin.py), never downloaded; models with their task.
BUILTIN_MODELS = {
    "builtin:tiny-llama": "causal-lm",
    "builtin:tiny-encoder": "sequence-classification",
}
BUILTIN_DATASETS = ("builtin:demo-text", "builtin:demo-classification")
GLOB_CHARACTERS = "*?[]{}"


def _known_builtin(value: str, known: Iterable[str], what: str) -> str:
    if value.startswith(BUILTIN_PREFIX) and value not in known:
        raise ValueError(f"unknown built-in {what} {value!r}; known ones are {sorted(known)}.")
    return value


class ModelSpec(_Strict):
    name_or_path: str = Field(
        min_length=1,
        max_length=512,
        pattern=PATH_PATTERN,
        description="A local Hugging Face checkpoint folder, a hub id (resolved through the "
        "workers' Hugging Face cache; offline with HF_HUB_OFFLINE=1), a .gguf file "
        "(dequantized by transformers) or builtin:tiny-llama / builtin:tiny-encoder.",
    )
    task: Literal["causal-lm", "sequence-classification"] = "causal-lm"
    revision: str | None = Field(default=None, max_length=128, pattern=r"^[\w.\-/]+$")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"

    @field_validator("name_or_path")
    @classmethod
    def _builtin(cls, value: str) -> str:
        return _known_builtin(value, BUILTIN_MODELS, "model")

    @field_validator("revision")
    @classmethod
    def _no_parent(cls, value: str | None) -> str | None:
        if value is not None and ".." in value:
            raise ValueError(f"revision must not contain '..', but got {value!r}.")
        return value


def is_gguf(name_or_path: str) -> bool:
    return PurePath(name_or_path).suffix.lower() == ".gguf"


def dataset_format(declared: str, path: str, *, is_dir: bool) -> str | None:
    """The format a dataset path is read as, or None when it cannot be told."""
    if declared != "auto":
        return declared
    if is_dir:
        return "disk"
    suffix = PurePath(path).suffix
    return {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}.get(suffix)


DataPath = Annotated[str, Field(min_length=1, max_length=1024, pattern=PATH_PATTERN)]
FieldName = Annotated[str, Field(min_length=1, max_length=128)]
Shape = Literal["language_modeling", "prompt_completion", "conversational"]


def _one_file(value: str | None) -> str | None:
    # The datasets library expands globs: a pattern could reach files the root check never saw.
    # A dataset is exactly one file or folder.
    if value is not None and any(c in value for c in GLOB_CHARACTERS):
        raise ValueError(
            f"path must name one file or folder; glob characters {GLOB_CHARACTERS} are not "
            f"allowed, but got {value!r}."
        )
    return value


class DatasetSpec(_Strict):
    """The data, in TRL's dataset shapes: language modelling (a text field), prompt-completion
    (prompt + completion: strings or message lists) or conversational (messages: a list of
    {role, content}); classification data is text + label."""

    path: DataPath = Field(description="A JSONL/CSV file, a save_to_disk folder or a builtin.")
    format: Literal["auto", "jsonl", "csv", "disk"] = "auto"
    shape: Literal["auto", "language_modeling", "prompt_completion", "conversational"] = Field(
        default="auto",
        description="auto: messages -> conversational, prompt + completion -> "
        "prompt_completion, else the text field -> language_modeling.",
    )
    text_field: FieldName = "text"
    prompt_field: FieldName = "prompt"
    completion_field: FieldName = "completion"
    messages_field: FieldName = "messages"
    label_field: FieldName | None = None
    validation_path: DataPath | None = Field(
        default=None, description="A separate validation file in the same format."
    )
    test_path: DataPath | None = Field(
        default=None, description="A held-out test file: scored once, at the end of a trial."
    )
    validation_split: FieldName | None = Field(
        default=None, description="The validation split's name in a save_to_disk folder."
    )
    test_split: FieldName | None = None
    validation_fraction: float = Field(
        default=0.1, gt=0.0, le=0.5, description="Split off when no validation data is named."
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    max_train_examples: int | None = Field(default=None, ge=1, le=10**8)
    max_eval_examples: int = Field(default=256, ge=1, le=10**6)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        _one_file(value)
        return _known_builtin(value, BUILTIN_DATASETS, "dataset")

    @field_validator("validation_path", "test_path")
    @classmethod
    def _other_paths(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(BUILTIN_PREFIX):
            raise ValueError("validation and test data must be files or folders.")
        return _one_file(value)

    def paths(self) -> dict[str, str]:
        """Every local path the spec reads, by field name."""
        named = {"path": self.path, "validation_path": self.validation_path,
                 "test_path": self.test_path}  # fmt: skip
        return {k: v for k, v in named.items() if v and not v.startswith(BUILTIN_PREFIX)}


class MissingField(ValueError):
    """The data lacks a field the spec names; ``attribute`` is the spec's (e.g. text_field)."""

    def __init__(self, attribute: str, field: str, columns: Iterable[str]) -> None:
        super().__init__(f"dataset has no field {field!r}; it has {sorted(columns)}.")
        self.attribute = attribute


def dataset_shape(spec: DatasetSpec, columns: Iterable[str]) -> Shape:
    """The TRL shape of data with these columns, as the spec declares or as its fields say.

    Raises:
        MissingField: A field the shape needs is missing.
    """
    columns = set(columns)
    shape = spec.shape
    if shape == "auto":
        if spec.messages_field in columns:
            shape = "conversational"
        elif {spec.prompt_field, spec.completion_field} <= columns:
            shape = "prompt_completion"
        else:
            shape = "language_modeling"
    needed = {
        "conversational": ("messages_field",),
        "prompt_completion": ("prompt_field", "completion_field"),
        "language_modeling": ("text_field",),
    }[shape]
    for name in needed:
        if getattr(spec, name) not in columns:
            raise MissingField(name, getattr(spec, name), columns)
    return shape


LOSS_METRICS = ("eval_loss",)
GENERATION_METRICS = ("exact_match", "token_f1", "rouge_l", "regex", "contains")
Metric = Literal["eval_loss", "eval_accuracy", "exact_match", "token_f1", "rouge_l", "regex",
                 "contains"]  # fmt: skip


class ObjectiveSpec(_Strict):
    """What a trial reports. Generation metrics score greedy answers to the evaluation prompts
    against their references: normalised exact match, token F1, ROUGE-L, ``regex`` (the
    pattern's first group, or whole match, equal in answer and reference) and ``contains``
    (the reference appears in the answer)."""

    metric: Metric = "eval_loss"
    direction: Literal["minimize", "maximize"] = Field(
        default="minimize", description="Follows the metric when not given: a loss minimizes."
    )
    pattern: str | None = Field(
        default=None,
        max_length=MAX_PATTERN_CHARS,
        description="The regular expression of metric regex, in RE2 syntax (matched in linear "
        "time: no backreferences or lookaround).",
    )
    divergence_factor: float | None = Field(
        default=3.0,
        gt=1.0,
        le=1000.0,
        description="A loss above this many times the first batch's loss marks the trial "
        "diverged: pruned with a reason, never a result. null turns the check off.",
    )

    @field_validator("pattern")
    @classmethod
    def _linear(cls, value: str | None) -> str | None:
        if value is not None:
            compile_pattern(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _direction(cls, data: Any) -> Any:
        if isinstance(data, dict) and "direction" not in data:
            loss = data.get("metric", "eval_loss") in LOSS_METRICS
            data = {**data, "direction": "minimize" if loss else "maximize"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ObjectiveSpec:
        wanted = "minimize" if self.metric in LOSS_METRICS else "maximize"
        if self.direction != wanted:
            raise ValueError(f"{self.metric} is to {wanted}, but direction is {self.direction}.")
        if (self.metric == "regex") != (self.pattern is not None):
            raise ValueError("metric regex needs a pattern, and only it takes one.")
        return self

    @property
    def generates(self) -> bool:
        return self.metric in GENERATION_METRICS


class _SeededSampler(_Strict):
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)


class TPESamplerSpec(_SeededSampler):
    type: Literal["tpe"] = "tpe"
    n_startup_trials: int = Field(default=10, ge=0, le=10_000)
    multivariate: bool = True
    constant_liar: bool = True


class RandomSamplerSpec(_SeededSampler):
    type: Literal["random"] = "random"


class GridSamplerSpec(_SeededSampler):
    type: Literal["grid"] = "grid"


class CmaEsSamplerSpec(_SeededSampler):
    type: Literal["cmaes"] = "cmaes"
    n_startup_trials: int = Field(default=1, ge=0, le=10_000)


class GPSamplerSpec(_SeededSampler):
    type: Literal["gp"] = "gp"
    n_startup_trials: int = Field(default=10, ge=0, le=10_000)


class QMCSamplerSpec(_SeededSampler):
    type: Literal["qmc"] = "qmc"
    qmc_type: Literal["sobol", "halton"] = "sobol"
    scramble: bool = True


SamplerSpec = Annotated[
    TPESamplerSpec
    | RandomSamplerSpec
    | GridSamplerSpec
    | CmaEsSamplerSpec
    | GPSamplerSpec
    | QMCSamplerSpec,
    Field(discriminator="type"),
]


def cools_down(scheduler: SchedulerSpec) -> bool:
    """Whether paused configurations are ranked by a cool-down branch's score."""
    return bool(getattr(scheduler, "cooldown", False))


MAX_STEP = 10**12  # steps are training examples seen; far beyond any fine-tune


class _ThresholdPruner(_Strict):
    n_startup_trials: int = Field(default=5, ge=0, le=10_000)
    n_warmup_steps: int = Field(default=0, ge=0, le=MAX_STEP)
    interval_steps: int = Field(default=1, ge=1, le=MAX_STEP)
    n_min_trials: int = Field(default=1, ge=1, le=10_000)


class MedianPrunerSpec(_ThresholdPruner):
    type: Literal["median"] = "median"


class PercentilePrunerSpec(_ThresholdPruner):
    type: Literal["percentile"] = "percentile"
    percentile: float = Field(default=25.0, ge=0.0, le=100.0)


class SuccessiveHalvingPrunerSpec(_Strict):
    type: Literal["successive_halving"] = "successive_halving"
    min_resource: Annotated[int, Field(ge=1, le=MAX_STEP)] | Literal["auto"] = "auto"
    reduction_factor: int = Field(default=3, ge=2, le=100)
    min_early_stopping_rate: int = Field(default=0, ge=0, le=100)


class HyperbandPrunerSpec(_Strict):
    type: Literal["hyperband"] = "hyperband"
    min_resource: int = Field(default=1, ge=1, le=MAX_STEP)
    max_resource: Annotated[int, Field(ge=1, le=MAX_STEP)] | Literal["auto"] = "auto"
    reduction_factor: int = Field(default=3, ge=2, le=100)

    @model_validator(mode="after")
    def _check(self) -> HyperbandPrunerSpec:
        if isinstance(self.max_resource, int) and self.max_resource <= self.min_resource:
            raise ValueError(
                f"max_resource must be > min_resource, but got {self.max_resource} "
                f"<= {self.min_resource}."
            )
        return self


class NopPrunerSpec(_Strict):
    type: Literal["none"] = "none"


PrunerSpec = Annotated[
    MedianPrunerSpec
    | PercentilePrunerSpec
    | SuccessiveHalvingPrunerSpec
    | HyperbandPrunerSpec
    | NopPrunerSpec,
    Field(discriminator="type"),
]


# --- schedulers: pause trials at rungs and continue the best from where they stopped --------
# A scheduler replaces the pruner's stop-only decisions: a trial that reaches its segment's
# last step is *paused* (its adapter and optimizer state kept), and a worker asking for work
# either continues a paused trial (hpo.core.schedulers decides which) or starts a
# new configuration. Steps are the fidelity axis: training examples seen.


COOLDOWN_HELP = (
    "WSD cool-down scoring (warmup_stable_decay fixed in training): a paused configuration is "
    "ranked by its score after a short branch from its checkpoint whose learning rate decays "
    "over a quarter of the steps so far; it continues from the stable checkpoint, not the "
    "cooled one (bench/results/cooldown.md)."
)


class NoSchedulerSpec(_Strict):
    type: Literal["none"] = "none"


class AshaSchedulerSpec(_Strict):
    """Asynchronous successive halving whose promotions continue the paused trial.

    Rungs lie at ``min_steps * reduction_factor**k`` steps; a trial pauses at each, and one in
    the best ``1/reduction_factor`` of the configurations that reached its rung continues to
    the next (the last segment runs to the trial's end).
    """

    type: Literal["asha"] = "asha"
    min_steps: int = Field(ge=1, le=MAX_STEP, description="Steps to the first rung.")
    reduction_factor: int = Field(default=3, ge=2, le=100)
    cooldown: bool = Field(default=False, description=COOLDOWN_HELP)


class TopKSchedulerSpec(_Strict):
    """Score every configuration at ``at_steps``, continue the best ``k`` to their end.

    Asynchronous: once ``min_scored`` configurations were scored, a paused one continues when
    it ranks among the ``k`` best scores so far (all of them once no new configuration may
    start).
    """

    type: Literal["top_k"] = "top_k"
    at_steps: int = Field(ge=1, le=MAX_STEP)
    k: int = Field(default=3, ge=1, le=10_000)
    min_scored: int = Field(default=9, ge=1, le=10_000)
    cooldown: bool = Field(default=False, description=COOLDOWN_HELP)

    @model_validator(mode="after")
    def _check(self) -> TopKSchedulerSpec:
        if self.min_scored < self.k:
            raise ValueError(f"min_scored must be >= k, but got {self.min_scored} < {self.k}.")
        return self


class AdaptiveSchedulerSpec(_Strict):
    """ASHA on the rungs whose scores are measured to rank like final scores; none otherwise.

    Candidate rungs lie at ``min_steps * reduction_factor**k``. Configurations that ran to their
    end unpaused (the first ``min_pairs``, then every ``audit_every``-th) give, per rung, the
    Spearman correlation between the score there and the final score; a rung is used only
    while the lower confidence bound of that correlation is at least ``min_agreement``. With
    no rung trusted, every configuration runs to its end: plain search, as with no scheduler.
    """

    type: Literal["adaptive"] = "adaptive"
    min_steps: int = Field(ge=1, le=MAX_STEP, description="Steps to the first candidate rung.")
    reduction_factor: int = Field(default=3, ge=2, le=100)
    min_agreement: float = Field(default=0.5, gt=-1.0, lt=1.0)
    min_pairs: int = Field(default=8, ge=4, le=10_000)
    audit_every: int = Field(default=4, ge=1, le=10_000)


PBTMutable = Literal["learning_rate", "weight_decay", "lora_dropout"]
PBT_MUTABLE: tuple[PBTMutable, ...] = ("learning_rate", "weight_decay", "lora_dropout")


class PBTSchedulerSpec(_Strict):
    """Population-based training over LoRA adapters (``hpo.core.schedulers.pbt``).

    Every ``interval_steps`` a member in the bottom ``quantile`` of the population copies the
    adapter and optimizer state of one in the top ``quantile`` (exploit) and perturbs the
    ``mutable`` hyperparameters (explore); shape-defining ones (rank, target modules, batch
    size) stay what the member started with.
    """

    type: Literal["pbt"] = "pbt"
    population_size: int = Field(default=8, ge=2, le=1000)
    interval_steps: int = Field(ge=1, le=MAX_STEP)
    quantile: float = Field(default=0.25, gt=0.0, le=0.5)
    perturbation_factors: tuple[float, float] = (0.8, 1.2)
    resample_probability: float = Field(default=0.25, ge=0.0, le=1.0)
    mutable: tuple[PBTMutable, ...] | None = Field(
        default=None,
        min_length=1,
        description="Hyperparameters explore perturbs; default: those of learning_rate, "
        "weight_decay and lora_dropout the space searches.",
    )

    @model_validator(mode="after")
    def _check(self) -> PBTSchedulerSpec:
        low, high = self.perturbation_factors
        if not 0 < low < 1 < high <= 10:
            raise ValueError(
                "perturbation_factors must be (down, up) with 0 < down < 1 < up <= 10, but got "
                f"{self.perturbation_factors}."
            )
        return self


SchedulerSpec = Annotated[
    NoSchedulerSpec
    | AshaSchedulerSpec
    | TopKSchedulerSpec
    | AdaptiveSchedulerSpec
    | PBTSchedulerSpec,
    Field(discriminator="type"),
]


class BudgetSpec(_Strict):
    max_trials: int = Field(default=20, ge=1, le=MAX_TRIALS)
    timeout_s: float | None = Field(default=None, gt=0, le=90 * 86400)
    max_gpu_hours: float | None = Field(default=None, gt=0, le=1e6)
    max_failures_in_a_row: int = Field(default=5, ge=1, le=1000)


class GenerationEvalSpec(_Strict):
    """Answers generated for the generation metrics (greedy unless the decoding settings say
    otherwise). Generating is slow: the objective's value is scored on ``max_examples`` at the
    end of a trial; each report scores only the first ``report_examples`` (a fixed subset, so
    trials compare like with like), or all ``max_examples`` with ``at_every_report``."""

    max_examples: int = Field(default=32, ge=1, le=10_000)
    report_examples: int = Field(
        default=8,
        ge=0,
        le=10_000,
        description="Evaluation prompts scored at each report (0: none, the trial reports "
        "nothing until its end).",
    )
    at_every_report: bool = False

    def report_limit(self) -> int:
        """How many prompts each report scores (0: reports are not scored)."""
        return (
            self.max_examples
            if self.at_every_report
            else min(self.report_examples, self.max_examples)
        )


class EvaluationSpec(_Strict):
    """Where trials report: every ``every_examples`` training examples seen.

    Intermediate values are reported at step = examples seen, a fidelity axis that is the
    same for every batch size and accumulation, so pruners compare like with like.
    """

    every_examples: int = Field(default=256, ge=1, le=10**9)
    batch_size: int | None = Field(
        default=None, ge=1, le=4096, description="Default: max(32, the training batch size)."
    )
    generation: GenerationEvalSpec = GenerationEvalSpec()


ReportTo = Literal["tensorboard", "wandb", "mlflow"]


def _tensorboard() -> list[ReportTo]:
    return ["tensorboard"]


class AdapterSource(_Strict):
    """A trained adapter: the best one of another study of the same owner."""

    study: str = Field(pattern=NAME_PATTERN)


# --- the study spec ---------------------------------------------------------------------------


class TrainSpec(_Strict):
    """What each trial does: the model, the data, the settings fixed for every trial, and how
    often it evaluates. ``mode: decode`` trains nothing: each trial generates with the base
    model (plus ``adapter``) under the searched decoding settings."""

    mode: Literal["fine-tune", "decode"] = "fine-tune"
    model: ModelSpec
    dataset: DatasetSpec
    adapter: AdapterSource | None = None
    loss_on: Literal["completion", "all"] = Field(
        default="completion",
        description="completion: loss on the completion / assistant tokens only (prompt-"
        "completion and conversational data); all: on every token.",
    )
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    evaluation: EvaluationSpec = EvaluationSpec()
    report_to: list[ReportTo] = Field(
        default_factory=_tensorboard,
        max_length=3,
        description="Where training curves go: tensorboard logs are kept with the trial in the "
        "artifact store; wandb and mlflow use their own environment settings.",
    )


class SearchSpec(_Strict):
    """What to search and how: the space, the objective, the sampler, the pruner and the budget.
    Everything the simulator needs; nothing about a model."""

    space: SearchSpace = Field(
        default_factory=lambda: SearchSpace.model_validate(DEFAULT_SEARCH_SPACE)
    )
    objective: ObjectiveSpec = ObjectiveSpec()
    sampler: SamplerSpec = TPESamplerSpec()
    # No pruner by default: on recorded LoRA curves every pruner we tried cost more GPU time
    # to reach a near-best fine-tune than it saved (bench/results/strategies.md).
    pruner: PrunerSpec = NopPrunerSpec()
    # Pause-and-continue instead of stop-only pruning (off by default: no rung of the recorded
    # curves ranked like their final loss, bench/results/strategies.md).
    scheduler: SchedulerSpec = NoSchedulerSpec()
    budget: BudgetSpec = BudgetSpec()

    @model_validator(mode="after")
    def _scheduler(self) -> SearchSpec:
        if self.scheduler.type != "none" and self.pruner.type != "none":
            raise ValueError(
                f"scheduler {self.scheduler.type!r} decides when trials stop; it needs pruner "
                f"'none', but got {self.pruner.type!r}."
            )
        if isinstance(self.scheduler, PBTSchedulerSpec):
            mutable = self.scheduler.mutable or PBT_MUTABLE
            missing = sorted(set(mutable) - self.space.names())
            if self.scheduler.mutable is not None and missing:
                raise ValueError(f"PBT mutates {missing}, which the space does not search.")
            if not set(mutable) & self.space.names():
                raise ValueError(f"PBT needs one of {list(PBT_MUTABLE)} in the space.")
        return self

    @model_validator(mode="after")
    def _finite_grid(self) -> SearchSpec:
        if self.sampler.type == "grid":
            size = grid_size(self.space)
            if size is None:
                raise ValueError(
                    "the grid sampler needs a finite space: give every float a step or use "
                    "categorical choices."
                )
            if size > MAX_GRID_SIZE:
                raise ValueError(f"the grid has {size} points; at most {MAX_GRID_SIZE}.")
        return self


class StudySpec(_Strict):
    """A study: what each trial trains (``train``) and how the search runs (``search``)."""

    name: str = Field(pattern=NAME_PATTERN, description="Unique across the service.")
    description: str | None = Field(default=None, max_length=2000)
    train: TrainSpec
    search: SearchSpec = SearchSpec()

    @model_validator(mode="after")
    def _cross_checks(self) -> StudySpec:
        both = sorted(self.search.space.names() & self.train.training.names())
        if both:
            raise ValueError(f"{both} are both searched and fixed in training; choose one.")
        model, dataset, metric = self.train.model, self.train.dataset, self.search.objective.metric
        if model.task == "sequence-classification" and dataset.label_field is None:
            raise ValueError("dataset.label_field is required for sequence-classification.")
        if metric == "eval_accuracy" and model.task == "causal-lm":
            raise ValueError("objective eval_accuracy needs task sequence-classification.")
        _check_mode(self.train, self.search)
        if self.train.mode == "fine-tune":
            _check_adapter(self.train, self.search)
        builtin_task = BUILTIN_MODELS.get(model.name_or_path)
        if builtin_task and builtin_task != model.task:
            raise ValueError(
                f"model {model.name_or_path} is a {builtin_task} model, "
                f"but task is {model.task!r}."
            )
        return self


def _check_mode(train: TrainSpec, search: SearchSpec) -> None:
    generation = {n for n in search.space.names() if BY_NAME[n].target == "generation"}
    objective = search.objective
    if train.mode == "decode":
        if generation != search.space.names():
            raise ValueError("a decode study searches decoding settings only.")
        if not objective.generates:
            raise ValueError(f"a decode study needs a generation metric, not {objective.metric}.")
        if train.model.task != "causal-lm":
            raise ValueError("a decode study needs a causal-lm model.")
        if search.scheduler.type != "none":
            raise ValueError("a decode study trains nothing to pause: use scheduler 'none'.")
        return
    if generation:
        raise ValueError(
            f"{sorted(generation)} are decoding settings: search them in a decode study "
            "(train.mode: decode), or fix them in training."
        )
    if train.adapter is not None:
        raise ValueError("train.adapter is for decode studies.")
    if objective.generates and train.model.task != "causal-lm":
        raise ValueError(f"{objective.metric} needs a causal-lm model.")
    _check_scheduler(train, search)


def _check_scheduler(train: TrainSpec, search: SearchSpec) -> None:
    scheduler = search.scheduler
    if scheduler.type == "none":
        return
    if search.objective.generates and not train.evaluation.generation.report_limit():
        raise ValueError(
            f"scheduler {scheduler.type!r} ranks trials by the reports they make as they "
            f"train; {search.objective.metric} is scored once at the end when "
            "train.evaluation.generation.report_examples is 0 (set it, or at_every_report)."
        )
    if cools_down(scheduler):
        fixed = train.training.values().get("lr_scheduler_type")
        if fixed != "warmup_stable_decay" or "lr_scheduler_type" in search.space.names():
            raise ValueError(
                "cooldown scores a branch that decays a warmup_stable_decay schedule: fix "
                "train.training.lr_scheduler_type to warmup_stable_decay."
            )
    if isinstance(scheduler, PBTSchedulerSpec) and (
        scheduler.population_size > search.budget.max_trials
    ):
        raise ValueError(
            f"PBT trains population_size={scheduler.population_size} members; "
            f"budget.max_trials={search.budget.max_trials} counts them and must be at least "
            "that."
        )


def _where(name: str, search: SearchSpec) -> str:
    return f"{'search.space' if name in search.space.names() else 'train.training'}.{name}"


def _possible(name: str, train: TrainSpec, search: SearchSpec) -> list[Any]:
    """The values a setting can take in a study's trials: its choices, the ends of a searched
    range, or the one value fixed or defaulted."""
    dists = search.space.distributions()
    if name in dists:
        dist = dists[name]
        if isinstance(dist, CategoricalDistribution | IntDistribution):
            return list(dist.values())
        return [dist.low, dist.high]
    return [train.training.values().get(name, BY_NAME[name].default)]


def _check_adapter(train: TrainSpec, search: SearchSpec) -> None:
    """Refuse at registration the adapter settings PEFT would refuse in every trial they
    meet (or silently ignore), naming the field."""
    methods = _possible("lora_method", train, search)
    inits = set(_possible("init_lora_weights", train, search)) - {"default"}
    if "adalora" in methods and inits:
        raise ValueError(
            f"{_where('init_lora_weights', search)}: {sorted(inits)} with lora_method adalora; "
            "AdaLoRA initialises its own adapter (PEFT ignores init_lora_weights there): "
            "leave it default."
        )
    ranks = _possible("lora_r", train, search)
    if "orthogonal" in inits and any(r % 2 for r in ranks):
        raise ValueError(
            f"{_where('lora_r', search)}: init_lora_weights orthogonal needs an even rank, "
            f"but lora_r can be {next(r for r in ranks if r % 2)}."
        )
    if "adalora" not in methods:
        return
    tinit = max(_possible("adalora_tinit", train, search))
    tfinal = max(_possible("adalora_tfinal", train, search))
    if tinit + tfinal >= 1:
        raise ValueError(
            f"{_where('adalora_tfinal', search)}: adalora_tinit + adalora_tfinal can be "
            f"{tinit:g} + {tfinal:g}; the shares of the steps before and after AdaLoRA's rank "
            "allocation must leave some steps to allocate in (sum below 1)."
        )
    fixed = train.training.values()
    if "adalora_init_r" in fixed and fixed["adalora_init_r"] < max(ranks):
        raise ValueError(
            f"train.training.adalora_init_r: {fixed['adalora_init_r']} is below lora_r "
            f"{max(ranks)}, AdaLoRA's target average rank; it starts above and prunes down."
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
