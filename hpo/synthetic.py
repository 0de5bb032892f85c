"""Synthetic LoRA-like learning curves whose early ranks agree with final ranks, or not.

A task is a grid of learning rate {1e-5, 3e-5, 1e-4, 3e-4} x batch size {8, 16, 32, 64} x
LoRA rank {4, 16, 64}: 48 configurations, each with a validation-loss curve of ``POINTS``
evaluations. With ``u = log10(lr / 1e-4)``, ``v = log2(batch / 16)``, ``w = log2(r / 16) / 2``
and ``late`` in [0, 1] (the share of late blooming), configuration c has

- a floor ``1 + 0.1 (u - u*)^2 + 0.01 (w - 0.5)^2 + N(0, 0.01)``, best at
  ``u* = 0.3 - 0.9 late + 0.15 v`` (larger batches like larger rates);
- a speed (points to halve the excess loss) ``tau = 4 exp(-1.5 late u + 1.5 (1 - late) |u - u*|
  + N(0, 0.25))``: with ``late = 0`` the configurations near their best rate also learn
  fastest, so early ranks hold; with ``late = 1`` high rates learn fastest and the best floors
  lie at low rates, which bloom late;
- an over-fitting drift ``0.04 late max(0, u - u*) (t / POINTS)^2`` that lifts fast, high-rate
  curves near the end;

and its loss at point t is ``floor + 1.5 / (1 + t / tau) + drift + N(0, 0.002)``. A task's
noise comes from ``numpy.random.default_rng([seed, round(100 * late)])``. One point costs
``batch`` device-seconds (the same updates per evaluation at every batch size, as in NMTLC).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpo.core.spec import CategoricalDistribution, SearchSpace
from hpo.simulate import CurvePoint, NotRecorded

POINTS = 27
LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4)
BATCH_SIZES = (8, 16, 32, 64)
RANKS = (4, 16, 64)
NAMES = ("learning_rate", "per_device_train_batch_size", "lora_r")


@dataclass
class SyntheticTask:
    """One seeded task of the family: the same shape of objective as ``hpo.nmtlc.NMTLCTask``."""

    name: str
    curves: dict[tuple[float, int, int], list[float]]

    @property
    def search_space(self) -> SearchSpace:
        return SearchSpace.model_validate(
            {
                name: CategoricalDistribution(choices=list(values))
                for name, values in zip(NAMES, (LEARNING_RATES, BATCH_SIZES, RANKS), strict=True)
            }
        )

    def curve(self, params: dict[str, Any]) -> list[CurvePoint]:
        key = (params["learning_rate"], params["per_device_train_batch_size"], params["lora_r"])
        if key not in self.curves:
            raise NotRecorded(f"{self.name} has no configuration {params}")
        return [(float(key[1]), v) for v in self.curves[key]]

    @property
    def best_value(self) -> float:
        return min(c[-1] for c in self.curves.values())

    @property
    def full_grid_cost(self) -> float:
        return sum(key[1] * len(c) for key, c in self.curves.items())


def make_task(*, late: float, seed: int) -> SyntheticTask:
    """One task with late blooming ``late`` in [0, 1] (see the module docstring)."""
    if not 0.0 <= late <= 1.0:
        raise ValueError(f"late must be in [0, 1], but got {late=}.")
    rng = np.random.default_rng([seed, round(100 * late)])
    t = np.arange(1, POINTS + 1)
    curves = {}
    for lr in LEARNING_RATES:
        for batch in BATCH_SIZES:
            for rank in RANKS:
                u, v, w = math.log10(lr / 1e-4), math.log2(batch / 16), math.log2(rank / 16) / 2
                best_u = 0.3 - 0.9 * late + 0.15 * v
                floor = 1 + 0.1 * (u - best_u) ** 2 + 0.01 * (w - 0.5) ** 2 + rng.normal(0, 0.01)
                tau = 3 * math.exp(
                    -1.2 * late * u + (1 - late) * abs(u - best_u) + rng.normal(0, 0.2)
                )
                drift = 0.04 * late * max(0.0, u - best_u) * (t / POINTS) ** 2
                loss = floor + 0.8 * np.exp(-t / tau) + drift + rng.normal(0, 0.002, POINTS)
                curves[(lr, batch, rank)] = [float(x) for x in loss]
    return SyntheticTask(f"synthetic-late{late:g}/{seed}", curves)
