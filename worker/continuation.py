"""A trial as one segment of a configuration's training: the worker's half of pause and
continue, in one place (``hpo.core.schedulers`` decides the segments).

- Resume: a continuation starts from the state the segment it continues saved when it paused
  (kept in the artifact store, ``fetched_state``), makes that segment's reports again (one
  curve on the fidelity axis, at no cost), trains on with its own learning rate and weight
  decay (``Retune``) and records what the state it loaded scores (``record_resumed_value``).
- Pause: a segment stops at its first report at or after ``until`` examples; Trainer's
  checkpoint goes to the artifact store, then the trial is marked paused (``pause``).
- Cool-down: under a scheduler that ranks paused configurations by it, a pausing segment is
  also scored on a branch whose learning rate decays (``cooled_score``); the branch is thrown
  away and the configuration continues from the checkpoint.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol

import optuna
import torch
from optuna.trial import FrozenTrial
from peft import PeftModel, set_peft_model_state_dict
from peft.utils import SAFETENSORS_WEIGHTS_NAME as ADAPTER_SAFE_WEIGHTS_NAME
from safetensors.torch import load_file
from sqlalchemy.orm import Session, sessionmaker
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hpo.core import artifacts, records
from hpo.core.db import StudyRecord, session_scope
from hpo.core.optuna_tables import study_id, trial_id
from hpo.core.settings import Settings
from hpo.core.spec import StudySpec, cools_down
from worker.callbacks import FidelityCallback, WorkerShutdown, scores

if TYPE_CHECKING:
    from worker.objective import WorkerContext
    from worker.training import TrainResult, TrialHooks

# What Trainer.train(resume_from_checkpoint=...) reads: the adapter, the optimizer moments,
# the scheduler, the AMP scaler, the RNG streams and the trainer state (step, examples and
# tokens seen, which places the data loader), AdaLoRA's allocator. Not the tokenizer Trainer
# saves beside them.
ADALORA_STATE = "adalora_state.pt"
STATE_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "trainer_state.json",
    ADALORA_STATE,
)
RNG_FILES = "rng_state*.pth"


class Paused(optuna.TrialPruned):
    """The segment reached its ``until``: its state is saved and the trial told PRUNED with
    ``records.paused_at``, until a worker continues it. ``reported``: its reports so far."""

    def __init__(self, reason: str, reported: dict[int, float]) -> None:
        super().__init__(reason)
        self.reported = reported


class MissingCheckpoint(Exception):
    """The paused trial a segment continues has no saved state."""


@dataclass(frozen=True)
class Resume:
    """Where a continuation starts: the saved state of the segment it continues (a Trainer
    checkpoint folder), that segment's reports and its first training loss."""

    folder: Path
    reported: dict[int, float]
    initial_loss: float | None


class TrainSegment(Protocol):
    """``worker.training.train_trial`` with the study's model, data and device bound."""

    def __call__(
        self,
        trial: optuna.Trial,
        *,
        hparams: dict[str, Any],
        hooks: TrialHooks | None = None,
        until: int | None = None,
        resume: Resume | None = None,
    ) -> TrainResult: ...


# --- a segment, from its start to its pause -------------------------------------------------


def run_segment(
    ctx: WorkerContext,
    record: StudyRecord,
    trial: optuna.Trial,
    spec: StudySpec,
    *,
    hparams: dict[str, Any],
    hooks: TrialHooks,
    train: TrainSegment,
) -> TrainResult:
    """Train the segment ``trial`` is: from the state of the one it continues, if any, up to
    its ``until``, if any.

    Raises:
        Paused: The segment paused, its state kept (and, with a cool-down, its cooled score
            recorded).
    """
    with _stable_copy(spec) as stable:

        def keep_checkpoint(folder: Path) -> None:
            keep_state(ctx.settings, ctx.sessions, record=record, trial=trial, checkpoint=folder)
            if stable is not None:
                shutil.copytree(folder, stable)

        hooks = replace(hooks, keep_checkpoint=keep_checkpoint)
        try:
            with _resumed(ctx, record, trial) as resume:
                return train(
                    trial, hparams=hparams, hooks=hooks, until=records.until(trial), resume=resume
                )
        except Paused as paused:
            if stable is not None and records.yielded(trial) is None:
                cooled = cooled_score(
                    train,
                    direction=spec.search.objective.direction,
                    hparams=hparams,
                    checkpoint=stable,
                    reported=paused.reported,
                )
                if cooled is not None:
                    records.set_cooled_score(trial, cooled)
            raise


@contextmanager
def _resumed(
    ctx: WorkerContext, record: StudyRecord, trial: optuna.Trial
) -> Iterator[Resume | None]:
    """A continuation's starting point: the reports of the segment it continues, made again,
    and that segment's saved state."""
    continues = records.continues(trial)
    if continues is None:
        yield None
        return
    parent = ctx.storage.get_trial(
        ctx.storage.get_trial_id_from_study_id_trial_number(study_id(trial.study), continues)
    )
    for step, value in sorted(parent.intermediate_values.items()):
        trial.report(value, step)
    with fetched_state(ctx.settings, ctx.sessions, record=record, parent=parent) as folder:
        yield Resume(folder, dict(parent.intermediate_values), records.initial_train_loss(parent))


@contextmanager
def _stable_copy(spec: StudySpec) -> Iterator[Path | None]:
    """Where a pausing segment's checkpoint is copied for its cool-down branch, when the
    scheduler scores with one (the artifact store keeps the original)."""
    if not cools_down(spec.search.scheduler):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="hpo-stable-") as scratch:
        yield Path(scratch) / "checkpoint"


# --- inside the training run -----------------------------------------------------------------


class Retune(TrainerCallback):
    """Give a resumed run this segment's learning rate and weight decay.

    The optimizer and scheduler state a continuation loads hold the values of the segment
    that saved them; a PBT member that explored has new ones. The scheduler keeps its step
    and shape, on the new base learning rate. (LoRA dropout needs nothing: the adapter is
    built from this segment's hyperparameters before the saved weights are loaded into it.)
    """

    def __init__(self, *, learning_rate: float, weight_decay: float) -> None:
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **_: Any,
    ) -> None:
        scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's wrapper
        if not isinstance(scheduler, LambdaLR):
            raise TypeError(f"cannot retune a {type(scheduler).__name__} learning-rate schedule")
        groups = optimizer.param_groups
        # Trainer puts the parameters that decay first, those that do not (weight 0) second.
        groups[0]["weight_decay"] = self.weight_decay
        scheduler.base_lrs = [self.learning_rate] * len(groups)
        for group, factor in zip(groups, scheduler.lr_lambdas, strict=True):
            group["initial_lr"] = self.learning_rate
            group["lr"] = self.learning_rate * factor(scheduler.last_epoch)


def retune(hparams: dict[str, Any], resume: Resume | None) -> list[TrainerCallback]:
    """The callbacks a resumed run needs (none for a fresh one)."""
    if resume is None:
        return []
    return [Retune(learning_rate=hparams["learning_rate"], weight_decay=hparams["weight_decay"])]


def record_resumed_value(
    trial: optuna.Trial,
    trainer: Trainer,
    fidelity: FidelityCallback,
    peft_model: PeftModel,
    resume: Resume,
) -> None:
    """The objective on the state loaded, before any step: the paused segment's last report,
    if the state and the evaluation examples are what it saw (a continuation, not a restart).
    Trainer loads the same weights again as it resumes."""
    set_peft_model_state_dict(peft_model, load_file(resume.folder / ADAPTER_SAFE_WEIGHTS_NAME))
    with fidelity.silenced(), torch.random.fork_rng():
        value = fidelity.score(scores(trainer.evaluate()))
    records.set_resumed_value(trial, value)


def pause(
    trial: optuna.Trial,
    trainer: Trainer,
    fidelity: FidelityCallback,
    hooks: TrialHooks,
    out_dir: Path,
    until: int | None,
) -> NoReturn:
    """Keep the state Trainer saved at the pause, then mark the trial paused (in that order:
    a trial marked paused can always be continued). A segment that gave its worker up before
    its ``until`` queues its own continuation first, up to the same ``until``: a queued trial
    is claimed before any new one of its study."""
    assert hooks.keep_checkpoint is not None, "a segment that pauses needs keep_checkpoint"
    hooks.keep_checkpoint(out_dir / f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    if fidelity.yielded is not None:
        reason = f"{fidelity.yielded} at {fidelity.paused_at} examples"
        attrs = records.segment_attrs(
            continues=trial.number, until=until, slot=records.slot(trial)
        )
        trial.study.enqueue_trial(trial.params, user_attrs=attrs)
        records.mark_yielded(trial, reason=reason)
        raise Paused(reason, dict(fidelity.reported))
    assert until is not None, "only a segment with an until pauses"
    reason = f"paused at {fidelity.paused_at} examples (rung {until})"
    records.mark_paused(trial, at=until, reason=reason)
    raise Paused(reason, dict(fidelity.reported))


def cooled_score(
    train: TrainSegment,
    *,
    direction: Literal["minimize", "maximize"],
    hparams: dict[str, Any],
    checkpoint: Path,
    reported: dict[int, float],
) -> float | None:
    """WSD cool-down scoring: the objective after a branch from a paused segment's
    stable-phase ``checkpoint`` that runs the same warmup_stable_decay schedule on a quarter
    more steps, so the learning rate decays over the branch. The branch is thrown away (the
    configuration continues from ``checkpoint``); None when it diverged or the worker stops."""
    state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    steps = int(state["global_step"])
    branch = {**hparams, "max_steps": steps + max(1, steps // 4)}
    scratch = optuna.create_study(direction=direction, pruner=optuna.pruners.NopPruner()).ask()
    try:
        result = train(scratch, hparams=branch, resume=Resume(checkpoint, reported, None))
    except (optuna.TrialPruned, WorkerShutdown):
        return None
    return result.value


# --- a paused segment's state in the artifact store -----------------------------------------


def keep_state(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    record: StudyRecord,
    trial: optuna.Trial,
    checkpoint: Path,
) -> None:
    """Upload the state in a Trainer checkpoint folder for ``trial``. Errors propagate: a
    pause without its state could never be continued."""
    with tempfile.TemporaryDirectory(prefix="hpo-state-") as tmp:
        for path in [*(checkpoint / name for name in STATE_FILES), *checkpoint.glob(RNG_FILES)]:
            if path.is_file():
                shutil.copy2(path, tmp)
        with session_scope(sessions) as session:
            artifacts.save_folder(
                settings,
                session,
                study_id=record.id,
                trial=trial,
                folder=Path(tmp),
                kind=artifacts.CHECKPOINT,
            )


@contextmanager
def fetched_state(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    record: StudyRecord,
    parent: FrozenTrial,
) -> Iterator[Path]:
    """The state ``parent`` saved when it paused, unpacked into a folder for this block.

    Raises:
        MissingCheckpoint: ``parent`` saved none (its upload failed, or it never paused).
    """
    with session_scope(sessions) as session:
        stored = artifacts.recorded(
            session, study_id=record.id, trial_id=trial_id(parent), kind=artifacts.CHECKPOINT
        )
        artifact_id = stored.artifact_id if stored is not None else None
    if artifact_id is None:
        raise MissingCheckpoint(f"trial {parent.number} has no saved state to continue from")
    with tempfile.TemporaryDirectory(prefix="hpo-resume-") as tmp:
        artifacts.unpack(settings, artifact_id, Path(tmp))
        yield Path(tmp)
