"""Recorded SmolLM2-135M LoRA fine-tunes on CPU (``bench.record_curves``) as a curve set.

The recording ships with the project (``bench/curves/smollm2-arithmetic.jsonl``): a header
line, then one line per configuration of learning rate x LoRA rank (alpha = 2 x rank) x
batch size with its validation loss after every ``every_examples`` training examples. One
task, the same shape of objective as ``hpo.nmtlc.NMTLCTask``: the search space is the
recorded grid (categorical), a configuration's value is its last point.

A point's cost is modelled from the work it did, not the seconds it took on a shared
machine: ``every_examples`` training examples plus its evaluation, counted as a third of a
training example per held-out example (a forward pass without the backward pass), so every
point of every configuration costs the same. ``cost="seconds"`` replays the recorded device
seconds instead. A run that reached a non-finite loss ends early; its missing points take the
worst loss recorded anywhere in the set, as a diverged trial is worth nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpo.core.spec import CategoricalDistribution, SearchSpace
from hpo.simulate import CurvePoint, NotRecorded

RECORDING = Path(__file__).resolve().parents[1] / "bench" / "curves" / "smollm2-arithmetic.jsonl"
NAMES = ("learning_rate", "per_device_train_batch_size", "lora_r")
EVAL_SHARE = 1 / 3  # cost of evaluating one example relative to training on one
Key = tuple[float, int, int]


@dataclass
class SmolLM2Task:
    """The recorded grid: (lr, batch, r) -> eval loss per point, and each point's cost."""

    name: str
    curves: dict[Key, list[float]]
    costs: dict[Key, list[float]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def search_space(self) -> SearchSpace:
        return SearchSpace.model_validate(
            {
                name: CategoricalDistribution(choices=sorted({key[i] for key in self.curves}))
                for i, name in enumerate(NAMES)
            }
        )

    def curve(self, params: dict[str, Any]) -> list[CurvePoint]:
        key = (params["learning_rate"], params["per_device_train_batch_size"], params["lora_r"])
        if key not in self.curves:
            raise NotRecorded(f"{self.name} has no run with {params}")
        return list(zip(self.costs[key], self.curves[key], strict=True))

    @property
    def best_value(self) -> float:
        return min(c[-1] for c in self.curves.values())

    @property
    def full_grid_cost(self) -> float:
        return sum(sum(c) for c in self.costs.values())


def _key(params: dict[str, Any]) -> Key:
    return (
        float(params["learning_rate"]),
        int(params["per_device_train_batch_size"]),
        int(params["lora_r"]),
    )


def _complete_grid(keys: list[Key]) -> set[Key]:
    """The largest full product of recorded values: a value of a parameter stays only where
    every combination with the others' values was recorded (a cut-short recording)."""
    values: list[list[Any]] = [sorted({k[i] for k in keys}) for i in range(3)]
    present = set(keys)
    while True:
        full: set[Key] = {(a, b, c) for a in values[0] for b in values[1] for c in values[2]}
        if full <= present:
            return full
        # drop the value of any parameter that misses the most combinations
        missing = [
            (sum(1 for k in full - present if k[i] == v), i, v)
            for i in range(3)
            for v in values[i]
        ]
        _, i, v = max(missing)
        values[i].remove(v)


def load_tasks(
    path: Path = RECORDING, *, cost: Literal["examples", "seconds"] = "examples"
) -> list[SmolLM2Task]:
    """The recorded task (one), restricted to the complete part of the grid."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    meta = next(line["meta"] for line in lines if "meta" in line)
    rows = {_key(r["params"]): r for r in lines if "params" in r and r["points"]}
    if not rows:
        raise ValueError(f"{path} records no configuration yet")
    length = max(len(r["points"]) for r in rows.values())
    worst = max(p["eval_loss"] for r in rows.values() for p in r["points"])
    per_point = meta["every_examples"] + EVAL_SHARE * meta["eval_examples"]
    curves, costs = {}, {}
    for key in sorted(_complete_grid(list(rows))):
        points = rows[key]["points"]
        losses = [p["eval_loss"] for p in points]
        curves[key] = losses + [worst] * (length - len(losses))
        if cost == "seconds":
            seconds = [p["seconds"] or 0.0 for p in points]
            costs[key] = seconds + [0.0] * (length - len(seconds))
        else:
            costs[key] = [per_point] * length
    return [SmolLM2Task(f"smollm2/{path.stem.removeprefix('smollm2-')}", curves, costs, meta)]
