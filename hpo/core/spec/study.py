"""The study spec: what each trial trains (``train``) and how the search runs (``search``),
with the checks that need both."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from hpo.core.hyperparameters import BY_NAME
from hpo.core.spec.base import NAME_PATTERN, Strict
from hpo.core.spec.data import BUILTIN_MODELS, DatasetSpec, ModelSpec
from hpo.core.spec.metrics import METRICS
from hpo.core.spec.schedulers import PBTSchedulerSpec, cools_down
from hpo.core.spec.search import SearchSpec
from hpo.core.spec.shapes import DATA_SHAPES, Task, shapes_of
from hpo.core.spec.space import CategoricalDistribution, IntDistribution, TrainingSettings


class GenerationEvalSpec(Strict):
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


class EvaluationSpec(Strict):
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


class AdapterSource(Strict):
    """A trained adapter: the best one of another study of the same owner."""

    study: str = Field(pattern=NAME_PATTERN)


class TrainSpec(Strict):
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


class StudySpec(Strict):
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
        model, metric = self.train.model, self.search.objective.metric
        for name in _required(model.task):
            if getattr(self.train.dataset, name) is None:
                raise ValueError(f"dataset.{name} is required for {model.task}.")
        needed = METRICS[metric].task
        if needed not in (None, model.task) and not METRICS[metric].generates:
            raise ValueError(f"objective {metric} needs task {needed}.")
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
    needed = METRICS[objective.metric].task
    if objective.generates and needed not in (None, train.model.task):
        raise ValueError(f"{objective.metric} needs a {needed} model.")
    _check_scheduler(train, search)


def _required(task: Task) -> list[str]:
    """The dataset fields every shape of ``task`` reads: the spec must name them."""
    shapes = [DATA_SHAPES[name].fields for name in shapes_of(task)]
    return [name for name in shapes[0] if all(name in fields for fields in shapes)]


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
