"""AdaLoRA inside a Trainer run: the rank allocator driven at every optimiser step, its state
kept with a paused segment's checkpoint, and the rank pattern it ends at recorded per module.

PEFT's ``AdaLoraModel.update_and_allocate`` must run after each ``optimizer.step()`` and
before ``zero_grad()`` (it scores the adapter's weights by weight x gradient): that is
Trainer's ``on_optimizer_step``. PEFT's forward already adds the orthogonal regulariser to
the loss; evaluations here leave it out, so an AdaLoRA trial's eval_loss is the model's loss
alone, comparable with every other method's.

The live config holds no rank pattern between steps: with one, PEFT saves and loads the
adapter cut down to its current ranks, so a checkpoint would not load back into the
full-size adapter a continuation trains (nor train on as the unpaused run does). The pattern
lives here, goes to the config only while PEFT allocates, and for good when training ends
(the adapter then stored is the compact one ``PeftModel.from_pretrained`` loads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import torch
from peft import PeftModel
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hpo.core import records
from worker.continuation import ADALORA_STATE as STATE_NAME


def ranks(rank_pattern: dict[str, list[bool]]) -> dict[str, int]:
    """The rank of each adapted module (``model.layers.0.self_attn.q_proj``) from PEFT's
    rank pattern (keyed ``<module>.lora_E.<adapter>``, a keep-flag per rank)."""
    return {key.split(".lora_E")[0]: int(sum(kept)) for key, kept in rank_pattern.items()}


class RankAllocation(TrainerCallback):
    """Drive AdaLoRA's budget for ``model``; with ``resume`` (a checkpoint folder) start from
    the allocator state and rank pattern saved there."""

    def __init__(self, model: PeftModel, trial: optuna.Trial, resume: Path | None) -> None:
        self.tuner: Any = model.base_model
        self.config: Any = model.peft_config[model.active_adapter]
        self.trial = trial
        self.resume = resume
        self.rank_pattern: dict[str, list[bool]] | None = None
        _regularise_training_only(self.tuner)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        saved = self.resume / STATE_NAME if self.resume is not None else None
        if saved is None or not saved.is_file():
            return
        device = next(p.device for p in self.tuner.parameters())
        kept = torch.load(saved, map_location=device, weights_only=True)
        allocator = self.tuner.rankallocator
        allocator.ipt, allocator.exp_avg_ipt = kept["ipt"], kept["exp_avg_ipt"]
        allocator.exp_avg_unc = kept["exp_avg_unc"]
        self.rank_pattern = kept["rank_pattern"]

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self.config.rank_pattern = self.rank_pattern
        self.tuner.update_and_allocate(state.global_step)
        self.rank_pattern, self.config.rank_pattern = self.config.rank_pattern, None

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        allocator = self.tuner.rankallocator
        folder = Path(str(args.output_dir)) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        torch.save(
            {
                "ipt": allocator.ipt,
                "exp_avg_ipt": allocator.exp_avg_ipt,
                "exp_avg_unc": allocator.exp_avg_unc,
                "rank_pattern": self.rank_pattern,
            },
            folder / STATE_NAME,
        )

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self._record()  # a trial pruned at this report keeps where its budget was

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self.config.rank_pattern = self.rank_pattern
        self._record()

    def _record(self) -> None:
        if self.rank_pattern:
            records.set_rank_pattern(self.trial, ranks(self.rank_pattern))


def _regularise_training_only(tuner: Any) -> None:
    """Evaluate without the orthogonal regulariser PEFT adds to every loss the model returns."""
    regularised = tuner.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        return (regularised if tuner.training else tuner.model.forward)(*args, **kwargs)

    tuner.forward = forward
