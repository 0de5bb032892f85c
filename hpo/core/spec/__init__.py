"""The study spec: one set of pydantic models shared by the API, the worker and the simulator.

A spec is strict (unknown keys are rejected), self-checking (cross-field rules run after
init) and stored as ``model_dump(mode="json")``. Importing this package must stay cheap: no
FastAPI, no torch, no transformers.

Modules by concern: ``space`` (distributions; the ``search.space`` and ``train.training``
models generated from the hyperparameter declarations), ``data`` (model and dataset),
``shapes`` and ``metrics`` (the registries of data shapes and objective metrics), ``search``
(objective, samplers, pruners, budget), ``schedulers`` (pause-and-continue), ``study`` (the
train part, the whole spec and the checks that need both). Import from here.
"""

from __future__ import annotations

from hpo.core.spec.base import (
    MAX_GRID_SIZE,
    MAX_STEP,
    MAX_TRIALS,
    NAME_PATTERN,
    PATH_PATTERN,
    FiniteFloat,
    Scalar,
)
from hpo.core.spec.data import (
    BUILTIN_DATASETS,
    BUILTIN_MODELS,
    BUILTIN_PREFIX,
    DatasetSpec,
    MissingField,
    ModelSpec,
    dataset_format,
    dataset_shape,
    is_gguf,
)
from hpo.core.spec.metrics import GENERATION_METRICS, METRICS, Metric, MetricName
from hpo.core.spec.schedulers import (
    COOLDOWN_HELP,
    PBT_MUTABLE,
    AdaptiveSchedulerSpec,
    AshaSchedulerSpec,
    ForecastSchedulerSpec,
    NoSchedulerSpec,
    PBTMutable,
    PBTSchedulerSpec,
    SchedulerSpec,
    TopKSchedulerSpec,
    cools_down,
)
from hpo.core.spec.search import (
    BudgetSpec,
    CmaEsSamplerSpec,
    GPSamplerSpec,
    GridSamplerSpec,
    HyperbandPrunerSpec,
    MedianPrunerSpec,
    NopPrunerSpec,
    ObjectiveSpec,
    PercentilePrunerSpec,
    PrunerSpec,
    QMCSamplerSpec,
    RandomSamplerSpec,
    SamplerSpec,
    SearchSpec,
    SuccessiveHalvingPrunerSpec,
    TPESamplerSpec,
    WarmStartSpec,
)
from hpo.core.spec.shapes import DATA_SHAPES, DataShape, Task
from hpo.core.spec.space import (
    DEFAULT_SEARCH_SPACE,
    CategoricalDistribution,
    Distribution,
    FloatDistribution,
    IntDistribution,
    SearchSpace,
    TrainingSettings,
    check_distribution,
    grid_size,
)
from hpo.core.spec.study import (
    AdapterSource,
    EvaluationSpec,
    GenerationEvalSpec,
    StudySpec,
    TrainSpec,
)

__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_MODELS",
    "BUILTIN_PREFIX",
    "COOLDOWN_HELP",
    "DATA_SHAPES",
    "DEFAULT_SEARCH_SPACE",
    "GENERATION_METRICS",
    "MAX_GRID_SIZE",
    "MAX_STEP",
    "MAX_TRIALS",
    "METRICS",
    "NAME_PATTERN",
    "PATH_PATTERN",
    "PBT_MUTABLE",
    "AdapterSource",
    "AdaptiveSchedulerSpec",
    "ForecastSchedulerSpec",
    "AshaSchedulerSpec",
    "BudgetSpec",
    "CategoricalDistribution",
    "CmaEsSamplerSpec",
    "DataShape",
    "DatasetSpec",
    "Distribution",
    "EvaluationSpec",
    "FiniteFloat",
    "FloatDistribution",
    "GPSamplerSpec",
    "GenerationEvalSpec",
    "GridSamplerSpec",
    "HyperbandPrunerSpec",
    "IntDistribution",
    "MedianPrunerSpec",
    "Metric",
    "MetricName",
    "MissingField",
    "ModelSpec",
    "NoSchedulerSpec",
    "NopPrunerSpec",
    "ObjectiveSpec",
    "PBTMutable",
    "PBTSchedulerSpec",
    "PercentilePrunerSpec",
    "PrunerSpec",
    "QMCSamplerSpec",
    "RandomSamplerSpec",
    "SamplerSpec",
    "Scalar",
    "SchedulerSpec",
    "SearchSpace",
    "SearchSpec",
    "StudySpec",
    "SuccessiveHalvingPrunerSpec",
    "TPESamplerSpec",
    "Task",
    "TopKSchedulerSpec",
    "TrainSpec",
    "TrainingSettings",
    "WarmStartSpec",
    "check_distribution",
    "cools_down",
    "dataset_format",
    "dataset_shape",
    "grid_size",
    "is_gguf",
]
