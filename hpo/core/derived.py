"""Studies made from another study: train its best configuration on the full data, or search
decoding settings for its best adapter. One command each in the CLI; plain specs underneath."""

from __future__ import annotations

from typing import Any

from hpo.core.spec import StudySpec

DECODING_SPACE: dict[str, Any] = {
    "temperature": {"type": "float", "low": 0.05, "high": 1.5, "log": True},
    "top_p": {"type": "float", "low": 0.5, "high": 1.0},
    "repetition_penalty": {"type": "float", "low": 1.0, "high": 1.3},
    "max_new_tokens": {"type": "categorical", "choices": [16, 32, 64]},
}


def retrain_spec(source: StudySpec, params: dict[str, Any], *, name: str) -> StudySpec:
    """One trial of ``params`` on all of the training data (no ``max_train_examples``).

    The configuration is a one-point grid, so the new study's single trial is exactly it.
    """
    spec = source.model_dump(mode="json")
    spec["name"] = name
    spec["description"] = f"the best configuration of {source.name}, on the full data"
    spec["train"]["dataset"]["max_train_examples"] = None
    spec["search"] = {
        "space": {k: {"type": "categorical", "choices": [v]} for k, v in params.items()},
        "objective": spec["search"]["objective"],
        "sampler": {"type": "grid"},
        "budget": {"max_trials": 1},
    }
    return StudySpec.model_validate(spec)


def decode_spec(source: StudySpec, *, name: str, metric: str, trials: int) -> StudySpec:
    """Decoding settings for the best adapter of ``source``, scored with ``metric``."""
    train = source.train
    fixed = {k: v for k, v in train.training.values().items() if k == "max_seq_length"}
    return StudySpec.model_validate(
        {
            "name": name,
            "description": f"decoding settings for the best adapter of {source.name}",
            "train": {
                "mode": "decode",
                "model": train.model.model_dump(mode="json"),
                "dataset": train.dataset.model_dump(mode="json"),
                "adapter": {"study": source.name},
                "training": fixed,
                "evaluation": {"generation": train.evaluation.generation.model_dump()},
            },
            "search": {
                "space": DECODING_SPACE,
                "objective": {"metric": metric},
                "budget": {"max_trials": trials},
            },
        }
    )
