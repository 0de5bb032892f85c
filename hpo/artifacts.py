"""Trial adapters in Optuna's artifact store (a folder: ``HPO_ARTIFACT_DIR``)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial

from hpo.settings import Settings

ADAPTER_ATTR = "adapter_artifact_id"


def artifact_store(settings: Settings) -> FileSystemArtifactStore:
    settings.artifact_dir.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(settings.artifact_dir))


def save_adapter(settings: Settings, trial: optuna.Trial, adapter_dir: Path) -> str:
    """Zip a saved adapter folder, upload it for ``trial`` and return the artifact id."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = shutil.make_archive(
            str(Path(tmp) / f"trial{trial.number}-adapter"), "zip", adapter_dir
        )
        artifact_id = upload_artifact(
            artifact_store=artifact_store(settings), file_path=archive, study_or_trial=trial
        )
    trial.set_user_attr(ADAPTER_ATTR, artifact_id)
    return artifact_id


def adapter_path(settings: Settings, trial: FrozenTrial) -> Path | None:
    """Where the trial's adapter archive lies, or None if it has none."""
    artifact_id = trial.user_attrs.get(ADAPTER_ATTR)
    if not artifact_id:
        return None
    path = settings.artifact_dir / str(artifact_id)
    return path if path.is_file() else None
