"""A paused segment's training state: kept in the artifact store when it pauses, fetched by
whichever worker continues it (``hpo.core.schedulers``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial
from sqlalchemy.orm import Session, sessionmaker

from hpo.core import artifacts
from hpo.core.db import StudyRecord, session_scope
from hpo.core.optuna_tables import trial_id
from hpo.core.settings import Settings

# What Trainer.train(resume_from_checkpoint=...) reads: the adapter, the optimizer moments,
# the scheduler, the AMP scaler, the RNG streams and the trainer state (step, examples and
# tokens seen, which places the data loader), AdaLoRA's allocator. Not the tokenizer Trainer
# saves beside them.
ADALORA_STATE = "adalora_state.pt"
STATE_FILES = ("adapter_model.safetensors", "adapter_config.json", "optimizer.pt",
               "scheduler.pt", "scaler.pt", "trainer_state.json", ADALORA_STATE)  # fmt: skip
RNG_FILES = "rng_state*.pth"


class MissingCheckpoint(Exception):
    """The paused trial a segment continues has no saved state."""


def keep(settings: Settings, sessions: sessionmaker[Session], *, record: StudyRecord,
         trial: optuna.Trial, checkpoint: Path) -> None:  # fmt: skip
    """Upload the state in a Trainer checkpoint folder for ``trial``. Errors propagate: a
    pause without its state could never be continued."""
    with tempfile.TemporaryDirectory(prefix="hpo-state-") as tmp:
        for path in [*(checkpoint / name for name in STATE_FILES), *checkpoint.glob(RNG_FILES)]:
            if path.is_file():
                shutil.copy2(path, tmp)
        with session_scope(sessions) as session:
            artifacts.save_folder(settings, session, study_id=record.id, trial=trial,
                                  folder=Path(tmp), kind=artifacts.CHECKPOINT)  # fmt: skip


@contextmanager
def fetched(settings: Settings, sessions: sessionmaker[Session], *,
            record: StudyRecord, parent: FrozenTrial) -> Iterator[Path]:  # fmt: skip
    """The state ``parent`` saved when it paused, unpacked into a folder for this block.

    Raises:
        MissingCheckpoint: ``parent`` saved none (its upload failed, or it never paused).
    """
    with session_scope(sessions) as session:
        stored = artifacts.recorded(session, study_id=record.id, trial_id=trial_id(parent),
                                    kind=artifacts.CHECKPOINT)  # fmt: skip
        artifact_id = stored.artifact_id if stored is not None else None
    if artifact_id is None:
        raise MissingCheckpoint(f"trial {parent.number} has no saved state to continue from")
    with tempfile.TemporaryDirectory(prefix="hpo-resume-") as tmp:
        artifacts.unpack(settings, artifact_id, Path(tmp))
        yield Path(tmp)
