"""Trial adapters in Optuna's artifact store, found only through records the service wrote.

A worker uploads an adapter archive with Optuna's ``upload_artifact`` (which also shows it in
optuna-dashboard) and records ``(study, trial, artifact id)`` in ``hpo_artifacts``. The API
serves a file only through such a record: never through a trial attribute, which anything that
reaches Optuna's tables can write.

The store is a folder (``HPO_ARTIFACT_DIR``: local for one machine, a shared filesystem for
several) or, with ``HPO_ARTIFACT_STORE=s3://bucket/prefix``, an S3-compatible bucket through
Optuna's ``Boto3ArtifactStore``, so adapters written on one node download through an API on
another.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import optuna
from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from sqlalchemy import select
from sqlalchemy.orm import Session

from hpo.core import optuna_tables
from hpo.core.db import ArtifactRecord
from hpo.core.settings import Settings

if TYPE_CHECKING:  # Optuna's protocol for artifact stores is not exported
    from optuna.artifacts._protocol import ArtifactStore

ADAPTER = "adapter"
TENSORBOARD = "tensorboard"
# A paused segment's training state (adapter, optimizer, scheduler, RNG, position).
CHECKPOINT = "checkpoint"
# Optuna's upload_artifact names artifacts with uuid4(); nothing else is ever opened.
ARTIFACT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def artifact_store(settings: Settings) -> ArtifactStore:
    """The configured store: the S3 bucket of ``artifact_store`` if set, else the folder."""
    if settings.artifact_store is not None:
        return _s3_store(settings.artifact_store, settings.s3_endpoint_url)
    settings.artifact_dir.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(settings.artifact_dir))


class PrefixedStore:
    """Artifacts under a key prefix: Optuna's Boto3ArtifactStore names objects by id alone."""

    def __init__(self, store: ArtifactStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.store.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.store.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.prefix + artifact_id)


@lru_cache
def _s3_store(url: str, endpoint_url: str | None) -> ArtifactStore:
    """One client per process (boto3 clients are thread-safe and retry transient errors);
    credentials and region come from boto3's usual sources (``AWS_*`` variables, files, roles).
    """
    import boto3
    from botocore.config import Config

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    # S3-compatible servers (MinIO, Ceph) are addressed by path, not by bucket host names.
    config = Config(s3={"addressing_style": "path"}) if endpoint_url else None
    client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
    store = Boto3ArtifactStore(bucket, client=client)
    return PrefixedStore(store, prefix.rstrip("/") + "/") if prefix.strip("/") else store


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


def unpack(settings: Settings, artifact_id: str, target: Path) -> None:
    """Extract a recorded archive into ``target`` (zipfile keeps members inside it)."""
    with open_artifact(settings, artifact_id) as reader:
        archive = io.BytesIO(reader.read())  # object stores give unseekable streams
    with zipfile.ZipFile(archive) as z:
        z.extractall(target)


def remove_study_artifacts(settings: Settings, session: Session, *, study_id: int) -> None:
    """Delete the files of every artifact recorded for our study ``study_id``."""
    store = artifact_store(settings)
    for record in session.scalars(
        select(ArtifactRecord).where(ArtifactRecord.study_id == study_id)
    ):
        if ARTIFACT_ID.fullmatch(record.artifact_id):
            with contextlib.suppress(ArtifactNotFound):
                store.remove(record.artifact_id)
