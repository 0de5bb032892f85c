"""Settings from the environment (``HPO_*``), shared by the API, the worker and the CLI."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def normalize_database_url(url: str) -> str:
    """Pin PostgreSQL URLs to psycopg2 (SQLAlchemy 2.1 would pick psycopg 3)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HPO_", extra="ignore")

    database_url: str = "sqlite:///./hpo.db"
    auth: Literal["enabled", "disabled"] = "enabled"
    artifact_dir: Path = Path("./hpo-artifacts")
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "finetune-hpo")
    # Heartbeat: a trial whose worker has been silent for grace_period seconds is failed and
    # re-queued (at most max_retries times). Too short an interval fails healthy trials.
    heartbeat_interval: int = 10
    grace_period: int = 30
    max_retries: int = 3
    # Where specs may point: datasets only under data_roots; models under model_roots or as
    # hub ids. Lists are JSON in the environment: HPO_DATA_ROOTS='["/data", "/mnt/corpora"]'.
    data_roots: list[Path] = Field(default_factory=lambda: [Path(".")])
    model_roots: list[Path] = Field(default_factory=lambda: [Path(".")])
    # Failed token checks one client address may make per minute before it gets 429s.
    auth_failures_per_minute: int = Field(default=30, ge=1)
    # Check at registration that local datasets and models exist and parse. Turn off only where
    # the API host cannot see the workers' files; workers then find the mistakes.
    verify_inputs: bool = True
    # Executing a model repository's own code is an operator's decision, never a spec's.
    allow_trust_remote_code: bool = False

    @field_validator("database_url")
    @classmethod
    def _normalize(cls, value: str) -> str:
        return normalize_database_url(value)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
