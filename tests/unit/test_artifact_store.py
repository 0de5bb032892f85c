"""Which artifact store the settings choose, and that an id is checked before any store call."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from pydantic import ValidationError

from hpo.core.artifacts import PrefixedStore, artifact_store, open_artifact
from hpo.core.settings import Settings

# Nothing listens here: a store call would fail with a connection error, not ArtifactNotFound.
NOWHERE = "http://127.0.0.1:9"


def test_a_folder_unless_a_bucket_is_named(tmp_path: Path) -> None:
    assert isinstance(artifact_store(Settings(artifact_dir=tmp_path)), FileSystemArtifactStore)
    assert Settings(artifact_store="").artifact_store is None  # compose's unset variable
    bucket = Settings(artifact_store="s3://hpo-bucket", s3_endpoint_url=NOWHERE)
    assert isinstance(artifact_store(bucket), Boto3ArtifactStore)
    prefixed = artifact_store(bucket.model_copy(update={"artifact_store": "s3://hpo-bucket/a/b/"}))
    assert isinstance(prefixed, PrefixedStore) and prefixed.prefix == "a/b/"


@pytest.mark.parametrize("url", ["hpo-bucket", "s3://", "s3://UPPER", "file:///data", "s3://b"])
def test_only_s3_urls_name_a_bucket(url: str) -> None:
    with pytest.raises(ValidationError, match="s3://bucket"):
        Settings(artifact_store=url)


@pytest.mark.parametrize("artifact_id", ["../hpo.db", "a" * 36, "00000000-0000-4000-8000-0000"])
def test_malformed_ids_never_reach_the_bucket(artifact_id: str) -> None:
    settings = Settings(artifact_store="s3://hpo-bucket/adapters", s3_endpoint_url=NOWHERE)
    with pytest.raises(ArtifactNotFound, match="malformed"):
        open_artifact(settings, artifact_id)
