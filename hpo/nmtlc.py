"""Recorded LoRA fine-tuning curves from NMTLC (Zhang & Duh, AMTA 2024) as a CurveObjective.

The data is not shipped with this project: pass the path to ``nmtlc.pkl``. A task is one
language pair and one base model (family and size): 27 configurations over learning rate x
batch size x LoRA rank, each with a dev-perplexity curve; the objective is log(perplexity).
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.core.spec import CategoricalDistribution, SearchSpace
from hpo.simulate import CurvePoint, NotRecorded

# Parameters in billions by family and hidden size (BLOOMZ 560M/1.7B/3B, XGLM 564M/1.7B/2.9B).
PARAMS_B = {
    ("bloomz", 1024): 0.56,
    ("bloomz", 2048): 1.7,
    ("bloomz", 2560): 3.0,
    ("xglm", 1024): 0.564,
    ("xglm", 2048): 1.7,
    ("xglm", 2560): 2.9,
}
# Modelled cost of one checkpoint interval: proportional to parameters x batch size (the
# same number of updates per checkpoint for every run). The unit is arbitrary but shared.
SECONDS_PER_B_PARAM_PER_EXAMPLE = 1.0


@dataclass
class NMTLCTask:
    """One task: a language pair and a base model, 27 recorded configurations."""

    name: str
    curves: dict[tuple[float, int, int], list[float]]  # (lr, batch, r) -> log-ppl per checkpoint
    params_b: float

    @property
    def search_space(self) -> SearchSpace:
        lrs, batches, ranks = (sorted({key[i] for key in self.curves}) for i in range(3))
        return SearchSpace.model_validate(
            {
                "learning_rate": CategoricalDistribution(choices=lrs),
                "per_device_train_batch_size": CategoricalDistribution(choices=batches),
                "lora_r": CategoricalDistribution(choices=ranks),
            }
        )

    def curve(self, params: dict[str, Any]) -> list[CurvePoint]:
        batch = params["per_device_train_batch_size"]
        key = (params["learning_rate"], batch, params["lora_r"])
        if key not in self.curves:
            raise NotRecorded(f"{self.name} has no run with {params}")
        values = self.curves[key]
        cost = self.params_b * batch * SECONDS_PER_B_PARAM_PER_EXAMPLE
        return [(cost, v) for v in values]

    @property
    def best_value(self) -> float:
        """The best final value of any configuration (a trial's value is its last point)."""
        return min(c[-1] for c in self.curves.values())

    @property
    def full_grid_cost(self) -> float:
        """Device-seconds to train every configuration to its end once."""
        return sum(sum(c for c, _ in self.curve(self._params(k))) for k in self.curves)

    @staticmethod
    def _params(key: tuple[float, int, int]) -> dict[str, Any]:
        return dict(
            zip(("learning_rate", "per_device_train_batch_size", "lora_r"), key, strict=True)
        )


def load_tasks(path: Path) -> list[NMTLCTask]:
    """The ten fine-tuning tasks of NMTLC; a repeated configuration keeps its first curve."""
    with path.open("rb") as f:
        records = pickle.load(f)  # a local data file the caller names, not user input
    tasks: dict[tuple[str, str, int], dict[tuple[float, int, int], list[float]]] = {}
    for r in records:
        if r.get("task") != "finetune":
            continue
        hp = r["hyperparams"]
        task = (r["dataset_name"], r["basemodel"], hp["model_size"])
        key = (float(hp["initial_lr"]), int(hp["batch_size"]), int(hp["r"]))
        tasks.setdefault(task, {}).setdefault(key, [math.log(p) for p in r["perplexity_curve"]])
    return [
        NMTLCTask(f"{pair}/{family}-{size}", curves, PARAMS_B[(family, size)])
        for (pair, family, size), curves in sorted(tasks.items())
    ]
