"""Study bodies for tests, built from their parts."""

from __future__ import annotations

from typing import Any

TRAIN_PARTS = (
    "mode",
    "model",
    "dataset",
    "adapter",
    "loss_on",
    "training",
    "evaluation",
    "report_to",
)
SEARCH_PARTS = ("space", "objective", "sampler", "pruner", "scheduler", "budget", "warm_start")


def study_spec(name: str, **parts: Any) -> dict[str, Any]:
    """A study body from its parts: ``model=...``, ``space=...``, ``budget=...`` land in
    ``train`` or ``search`` where they belong; anything else stays at the top level."""
    spec: dict[str, Any] = {"name": name, "train": {}, "search": {}}
    for key, value in parts.items():
        section = "train" if key in TRAIN_PARTS else "search" if key in SEARCH_PARTS else None
        if section is None:
            spec[key] = value
        else:
            spec[section][key] = value
    if not spec["search"]:
        del spec["search"]
    return spec


def minimal_spec(name: str = "demo", **parts: Any) -> dict[str, Any]:
    """The tiny built-in model on the demo text, with everything else at its default."""
    defaults = {
        "model": {"name_or_path": "builtin:tiny-llama"},
        "dataset": {"path": "builtin:demo-text"},
    }
    return study_spec(name, **{**defaults, **parts})
