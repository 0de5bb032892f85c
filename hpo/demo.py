"""``hpo demo``: ``hpo run`` on this built-in spec, a whole study on this machine in minutes."""

from __future__ import annotations

from hpo.core.spec import DEFAULT_SEARCH_SPACE, StudySpec


def demo_spec(name: str, *, trials: int) -> StudySpec:
    """The six core hyperparameters on the tiny local Llama and the demo text."""
    return StudySpec.model_validate(
        {
            "name": name,
            "description": "hpo demo: LoRA on a tiny local Llama (CPU)",
            "train": {
                "model": {"name_or_path": "builtin:tiny-llama"},
                "dataset": {
                    "path": "builtin:demo-text",
                    "max_train_examples": 384,
                    "max_eval_examples": 96,
                },
                "training": {"max_seq_length": 40},
                "evaluation": {"every_examples": 128},
            },
            "search": {
                "space": {
                    **DEFAULT_SEARCH_SPACE,
                    "learning_rate": {"type": "float", "low": 1e-4, "high": 2e-2, "log": True},
                    "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16, 32]},
                },
                "sampler": {"type": "tpe", "n_startup_trials": 6},
                "pruner": {"type": "successive_halving"},  # the demo shows early stopping
                "budget": {"max_trials": trials},
            },
        }
    )
