"""Trial adapters in Optuna's artifact store, found only through records the service wrote.

A worker uploads an adapter archive with Optuna's ``upload_artifact`` (which also shows it in
optuna-dashboard) and records ``(study, trial, artifact id)`` in ``hpo_artifacts``. The API
serves a file only through such a record: never through a trial attribute, which anything that
reaches Optuna's tables can write.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from sqlalchemy import select
from sqlalchemy.orm import Session

from hpo.core import optuna_tables
from hpo.core.db import ArtifactRecord
from hpo.core.settings import Settings

ADAPTER = "adapter"
TENSORBOARD = "tensorboard"
# Optuna's upload_artifact names artifacts with uuid4(); nothing else is ever opened.
ARTIFACT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def artifact_store(settings: Settings) -> FileSystemArtifactStore:
    settings.artifact_dir.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(settings.artifact_dir))


def save_folder(
    settings: Settings,
    session: Session,
    *,
    study_id: int,
    trial: optuna.Trial,
    folder: Path,
    kind: str,
) -> str:
    """Zip a folder (a saved adapter, TensorBoard logs), upload it for ``trial``, record it;
    return its id. ``study_id`` is our study row's id (``hpo_studies.id``)."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = shutil.make_archive(
            str(Path(tmp) / f"trial{trial.number}-{kind}"), "zip", folder
        )
        artifact_id = upload_artifact(
            artifact_store=artifact_store(settings), file_path=archive, study_or_trial=trial
        )
    session.add(
        ArtifactRecord(
            artifact_id=artifact_id,
            study_id=study_id,
            trial_id=optuna_tables.trial_id(trial),
            trial_number=trial.number,
            kind=kind,
        )
    )
    return artifact_id


def recorded(
    session: Session, *, study_id: int, trial_id: int, kind: str = ADAPTER
) -> ArtifactRecord | None:
    """The artifact of ``kind`` of one trial of our study ``study_id``, if a worker stored one."""
    return session.scalar(
        select(ArtifactRecord).where(
            ArtifactRecord.study_id == study_id,
            ArtifactRecord.trial_id == trial_id,
            ArtifactRecord.kind == kind,
        )
    )


def open_artifact(settings: Settings, artifact_id: str) -> BinaryIO:
    """Open a recorded artifact for reading.

    Raises:
        ArtifactNotFound: The id is malformed or its file is gone.
    """
    if not ARTIFACT_ID.fullmatch(artifact_id):
        raise ArtifactNotFound(f"malformed artifact id {artifact_id!r}")
    return artifact_store(settings).open_reader(artifact_id)


def remove_study_artifacts(settings: Settings, session: Session, *, study_id: int) -> None:
    """Delete the files of every artifact recorded for our study ``study_id``."""
    store = artifact_store(settings)
    for record in session.scalars(
        select(ArtifactRecord).where(ArtifactRecord.study_id == study_id)
    ):
        if ARTIFACT_ID.fullmatch(record.artifact_id):
            with contextlib.suppress(ArtifactNotFound):
                store.remove(record.artifact_id)
