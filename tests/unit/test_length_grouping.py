"""The worker's batches group examples of similar length (less padding per batch)."""

from __future__ import annotations

import random
from pathlib import Path
from statistics import mean

import datasets
import torch
from transformers import TrainingArguments

from worker.trainer import LengthGroupedTrainer


def _padding_spread(order: list[int], lengths: list[int], batch: int) -> float:
    """Mean (longest - shortest) example per batch: the padding a batch carries."""
    batches = [order[i : i + batch] for i in range(0, len(order), batch)]
    return mean(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)


def test_batches_group_similar_lengths(tmp_path: Path) -> None:
    rng = random.Random(0)
    lengths = [rng.randint(8, 512) for _ in range(400)]
    data = datasets.Dataset.from_dict({"input_ids": [[1] * n for n in lengths]})
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, use_cpu=True, report_to="none"
    )
    trainer = LengthGroupedTrainer(
        model=torch.nn.Linear(2, 2), args=args, train_dataset=data, train_lengths=lengths
    )
    order = list(trainer._get_train_sampler())
    assert sorted(order) == list(range(len(lengths)))  # every example once
    shuffled = list(range(len(lengths)))
    rng.shuffle(shuffled)
    assert _padding_spread(order, lengths, 8) < _padding_spread(shuffled, lengths, 8) / 4
