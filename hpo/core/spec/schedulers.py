"""Schedulers: pause trials at rungs and continue the best from where they stopped.

A scheduler replaces the pruner's stop-only decisions: a trial that reaches its segment's last
step is *paused* (its adapter and optimizer state kept), and a worker asking for work either
continues a paused trial (``hpo.core.schedulers`` decides which) or starts a new
configuration. Steps are the fidelity axis: training examples seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from hpo.core.hyperparameters import HYPERPARAMETERS
from hpo.core.spec.base import MAX_STEP, Strict

COOLDOWN_HELP = (
    "WSD cool-down scoring (warmup_stable_decay fixed in training): a paused configuration is "
    "ranked by its score after a short branch from its checkpoint whose learning rate decays "
    "over a quarter of the steps so far; it continues from the stable checkpoint, not the "
    "cooled one (bench/results/cooldown.md)."
)


class NoSchedulerSpec(Strict):
    type: Literal["none"] = "none"


class AshaSchedulerSpec(Strict):
    """Asynchronous successive halving whose promotions continue the paused trial.

    Rungs lie at ``min_steps * reduction_factor**k`` steps; a trial pauses at each, and one in
    the best ``1/reduction_factor`` of the configurations that reached its rung continues to
    the next (the last segment runs to the trial's end).
    """

    type: Literal["asha"] = "asha"
    min_steps: int = Field(ge=1, le=MAX_STEP, description="Steps to the first rung.")
    reduction_factor: int = Field(default=3, ge=2, le=100)
    cooldown: bool = Field(default=False, description=COOLDOWN_HELP)


class TopKSchedulerSpec(Strict):
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


class AdaptiveSchedulerSpec(Strict):
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


class ForecastSchedulerSpec(Strict):
    """Pause where a learning-curve forecast can judge; continue what may beat the best.

    Candidate rungs lie at ``min_steps * reduction_factor**k``. The first 4 configurations
    run unpaused; a candidate rung is then a pausing rung once a forecast of the final value
    exists there (a regression fitted on the study's finished curves that went past it,
    ``hpo.core.forecast``), or once ``adaptive`` trusts it (ASHA ranks those). At a forecast
    rung a paused configuration continues when its forecast ranks in the best
    ``1/reduction_factor`` of those that reached the rung, or when the optimistic bound of
    its forecast beats the best final value so far; once no new configuration may start
    (budget spent, or every point of a finite space tried), those whose bound beats the best
    continue, the others one at a time when nothing runs, so one an early score ranked out
    is not lost.
    """

    type: Literal["forecast"] = "forecast"
    min_steps: int = Field(ge=1, le=MAX_STEP, description="Steps to the first candidate rung.")
    reduction_factor: int = Field(default=3, ge=2, le=100)
    min_agreement: float = Field(default=0.5, gt=-1.0, lt=1.0)
    min_pairs: int = Field(default=8, ge=4, le=10_000)
    audit_every: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Every audit_every-th configuration runs unpaused, a sample for the "
        "rungs' agreement; None: only the first 4 (the forecast's first curves).",
    )
    quantile: float = Field(
        default=0.1,
        gt=0.0,
        lt=0.5,
        description="Quantile of the forecast's leave-one-out errors its optimistic bound "
        "takes: lower continues more paused configurations.",
    )


# What PBT's explore may perturb: the settings declared ``mutable`` (hpo.core.hyperparameters).
PBT_MUTABLE = tuple(hp.name for hp in HYPERPARAMETERS if hp.mutable)
if TYPE_CHECKING:
    PBTMutable = str
else:
    PBTMutable = Literal[PBT_MUTABLE]


def _listed(names: tuple[str, ...]) -> str:
    return f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]


class PBTSchedulerSpec(Strict):
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
        description="Hyperparameters explore perturbs; default: those of "
        f"{_listed(PBT_MUTABLE)} the space searches.",
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
    | ForecastSchedulerSpec
    | PBTSchedulerSpec,
    Field(discriminator="type"),
]


def cools_down(scheduler: SchedulerSpec) -> bool:
    """Whether paused configurations are ranked by a cool-down branch's score."""
    return bool(getattr(scheduler, "cooldown", False))
