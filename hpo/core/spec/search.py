"""How a study searches: the objective, the sampler, the pruner, the scheduler and the budget.
Everything the simulator needs; nothing about a model."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from hpo.core.patterns import MAX_PATTERN_CHARS, compile_pattern
from hpo.core.spec.base import MAX_GRID_SIZE, MAX_STEP, MAX_TRIALS, NAME_PATTERN, Strict
from hpo.core.spec.metrics import METRICS, PATTERN_METRICS, Direction, MetricName, TieBreak
from hpo.core.spec.schedulers import (
    PBT_MUTABLE,
    NoSchedulerSpec,
    PBTSchedulerSpec,
    SchedulerSpec,
)
from hpo.core.spec.space import DEFAULT_SEARCH_SPACE, SearchSpace, grid_size


class ObjectiveSpec(Strict):
    """What a trial reports. Generation metrics score greedy answers to the evaluation prompts
    against their references: normalised exact match, token F1, ROUGE-L, ``regex`` (the
    pattern's first group, or whole match, equal in answer and reference) and ``contains``
    (the reference appears in the answer)."""

    metric: MetricName = "eval_loss"
    direction: Direction = Field(
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
    tie_break: TieBreak | None = Field(
        default=None,
        description="Among trials of equal value the lower of this score wins (best trial, "
        "schedulers' rankings, warm-start rankings). Default: eval_loss behind any metric but "
        "eval_loss itself (a generation metric saturates: every trial 1.0); null for none.",
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
            metric = data.get("metric", "eval_loss")
            known = METRICS.get(metric) if isinstance(metric, str) else None
            data = {**data, "direction": known.direction if known else "maximize"}
        if isinstance(data, dict) and "tie_break" not in data:
            tied = data.get("metric", "eval_loss") != "eval_loss"
            data = {**data, "tie_break": "eval_loss" if tied else None}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ObjectiveSpec:
        wanted = METRICS[self.metric].direction
        if self.direction != wanted:
            raise ValueError(f"{self.metric} is to {wanted}, but direction is {self.direction}.")
        if METRICS[self.metric].pattern != (self.pattern is not None):
            raise ValueError(
                f"metric {' / '.join(PATTERN_METRICS)} needs a pattern, and only it takes one."
            )
        return self

    @property
    def generates(self) -> bool:
        """Whether the metric scores generated answers (``Metric.generates``)."""
        return METRICS[self.metric].generates


class _SeededSampler(Strict):
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)


class TPESamplerSpec(_SeededSampler):
    type: Literal["tpe"] = "tpe"
    n_startup_trials: int = Field(default=4, ge=0, le=10_000)
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
    n_startup_trials: int = Field(default=4, ge=0, le=10_000)


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


class _ThresholdPruner(Strict):
    n_startup_trials: int = Field(default=5, ge=0, le=10_000)
    n_warmup_steps: int = Field(default=0, ge=0, le=MAX_STEP)
    interval_steps: int = Field(default=1, ge=1, le=MAX_STEP)
    n_min_trials: int = Field(default=1, ge=1, le=10_000)


class MedianPrunerSpec(_ThresholdPruner):
    type: Literal["median"] = "median"


class PercentilePrunerSpec(_ThresholdPruner):
    type: Literal["percentile"] = "percentile"
    percentile: float = Field(default=25.0, ge=0.0, le=100.0)


class SuccessiveHalvingPrunerSpec(Strict):
    type: Literal["successive_halving"] = "successive_halving"
    min_resource: Annotated[int, Field(ge=1, le=MAX_STEP)] | Literal["auto"] = "auto"
    reduction_factor: int = Field(default=3, ge=2, le=100)
    min_early_stopping_rate: int = Field(default=0, ge=0, le=100)


class HyperbandPrunerSpec(Strict):
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


class NopPrunerSpec(Strict):
    type: Literal["none"] = "none"


PrunerSpec = Annotated[
    MedianPrunerSpec
    | PercentilePrunerSpec
    | SuccessiveHalvingPrunerSpec
    | HyperbandPrunerSpec
    | NopPrunerSpec,
    Field(discriminator="type"),
]


class BudgetSpec(Strict):
    max_trials: int = Field(default=20, ge=1, le=MAX_TRIALS)
    timeout_s: float | None = Field(default=None, gt=0, le=90 * 86400)
    max_gpu_hours: float | None = Field(default=None, gt=0, le=1e6)
    max_failures_in_a_row: int = Field(default=5, ge=1, le=1000)
    max_trial_s: float | None = Field(
        default=None,
        gt=0,
        description="Seconds one trial (one segment of a paused configuration) may train; "
        "past it the trial stops as pruned at its next step. The operator's HPO_MAX_TRIAL_S "
        "bounds it, and bounds every trial when unset.",
    )


MAX_WARM_START_STUDIES = 16
MAX_WARM_START_TOP_K = 20
# Earlier studies ``auto`` picks at most (newest first): enough related results to rank by,
# few enough that the sources' trials stay a small read at registration.
MAX_WARM_START_AUTO = 5


class WarmStartSpec(Strict):
    """Try earlier studies' best configurations first (``hpo.core.warm_start``)."""

    studies: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        default_factory=list,
        max_length=MAX_WARM_START_STUDIES,
        description="Earlier studies of the same owner whose finished trials seed this one.",
    )
    auto: bool = Field(
        default=False,
        description=f"Also seed from up to {MAX_WARM_START_AUTO} of the owner's newest earlier "
        "studies of the same task: the same base model, dataset, declared data shape, mode "
        "and objective metric, with a completed trial (after the named ones; none found: the "
        "study starts cold).",
    )
    top_k: int = Field(
        default=3,
        ge=1,
        le=MAX_WARM_START_TOP_K,
        description="How many of their best configurations (interleaved across the studies) "
        "are tried first; then the sampler searches as usual, with them as its history.",
    )

    @field_validator("studies")
    @classmethod
    def _unique(cls, studies: list[str]) -> list[str]:
        if len(set(studies)) != len(studies):
            raise ValueError(f"studies must be unique, but got {studies}.")
        return studies

    @model_validator(mode="after")
    def _some_source(self) -> WarmStartSpec:
        if not self.studies and not self.auto:
            raise ValueError("name earlier studies, set auto: true, or both.")
        return self


class SearchSpec(Strict):
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
    warm_start: WarmStartSpec | None = Field(
        default=None, description="Off by default: every study starts cold."
    )

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
