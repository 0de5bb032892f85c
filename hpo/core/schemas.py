"""API schemas: ``StudySpec`` is the input; these are the outputs and small request bodies."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from hpo.core.spec import Scalar, StudySpec

if TYPE_CHECKING:  # the client reads these schemas without optuna installed
    from optuna.trial import FrozenTrial

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    count: int


class TrialCountsPublic(BaseModel):
    complete: int
    pruned: int = Field(description="Stopped for good: by the pruner, or diverged.")
    paused: int = Field(
        description="Stopped at a scheduler's rung with their state kept: a scheduler may "
        "continue them (each continuation is a trial of its own). Optuna records them as "
        "pruned, and `state=pruned` lists them with the others; `state=paused` lists them alone."
    )
    yielded: int = Field(
        default=0,
        description="Gave their worker up before their rung (preempted for another owner's "
        "fair share, or their study paused or stopped), their state kept: a queued trial "
        "continues each. Optuna records them as pruned; no budget counts them.",
    )
    fail: int
    running: int
    waiting: int
    finished: int = Field(description="complete + pruned + paused.")


class StudySummary(BaseModel):
    name: str
    owner: str
    status: str
    status_reason: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class StudyPublic(StudySummary):
    spec: StudySpec
    trials: TrialCountsPublic
    best_value: float | None
    best_params: dict[str, Any] | None
    best_trial: int | None
    best_ties: int = Field(
        default=0,
        description="COMPLETE trials whose value equals the best: over 1, the metric saturated "
        "and search.objective.tie_break chose the best.",
    )
    baseline: dict[str, float] = Field(
        default_factory=dict,
        description="The untuned model's scores on the evaluation data (eval_loss, the "
        "objective), measured once by the first trial.",
    )
    warm_start_from: list[str] | None = Field(
        default=None,
        description="With search.warm_start: the earlier studies that seeded it, named ones "
        "first, then those auto chose; empty when none matched and it started cold.",
    )


class TrialPublic(BaseModel):
    number: int
    state: str
    params: dict[str, Any]
    value: float | None
    intermediate_values: dict[int, float]
    datetime_start: dt.datetime | None
    datetime_complete: dt.datetime | None
    duration_s: float | None
    user_attrs: dict[str, Any]

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialPublic:
        duration = trial.duration.total_seconds() if trial.duration else None
        return cls(
            number=trial.number,
            state=trial.state.name.lower(),
            params=trial.params,
            value=trial.value,
            intermediate_values=trial.intermediate_values,
            datetime_start=trial.datetime_start,
            datetime_complete=trial.datetime_complete,
            duration_s=duration,
            user_attrs=trial.user_attrs,
        )


class BestConfigPublic(BaseModel):
    """The best trial's configuration as keyword arguments of the libraries that use them."""

    study: str
    trial: int
    value: float | None
    model: str
    training_arguments: dict[str, Any] = Field(description="transformers.TrainingArguments")
    sft_config: dict[str, Any] = Field(description="trl.SFTConfig, on top of those")
    peft_config_class: str = Field(description="LoraConfig or AdaLoraConfig (peft)")
    lora_config: dict[str, Any] = Field(description="peft.LoraConfig / peft.AdaLoraConfig")
    generation_config: dict[str, Any] = Field(description="transformers.GenerationConfig")
    trained_on: str | None = Field(
        default=None,
        description="The device the trial ran on (cpu, cuda:0, ...): training_arguments' "
        "bf16, fp16 and use_cpu are as it used them; set them anew for another device.",
    )


class EnqueueRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    params: dict[str, Scalar] = Field(min_length=1, max_length=64)


class EnqueuePublic(BaseModel):
    params: dict[str, Any]
    state: str = "waiting"


class ErrorPublic(BaseModel):
    """Every error but a 422 answers this body."""

    detail: str = Field(description="What went wrong, in one line a person can act on.")


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="Where: a path into the request, e.g. body.name.")
    msg: str
    type: str | None
    ctx: dict[str, Any] | None = Field(
        default=None,
        description="The numbers behind it where it has some: a resource_limit's estimate, "
        "limit, unit and the setting that holds the limit.",
    )


class ValidationErrorPublic(BaseModel):
    """A 422: each problem with the place it was found."""

    detail: list[ValidationIssue]
