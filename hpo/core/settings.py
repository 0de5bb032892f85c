"""Settings from the environment (``HPO_*``), shared by the API, the worker and the CLI."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

S3_URL = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?")


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
    # Adapters in an S3-compatible bucket instead of artifact_dir: s3://bucket/prefix. Keys
    # and region come from the usual AWS_* variables; the endpoint for MinIO, Ceph and the like.
    artifact_store: str | None = None
    s3_endpoint_url: str | None = None
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "finetune-hpo")
    # Heartbeat: a trial whose worker has been silent for grace_period seconds is failed and
    # re-queued (at most max_retries times). Too short an interval fails healthy trials.
    heartbeat_interval: int = 10
    grace_period: int = 30
    max_retries: int = 3
    # Liveness is progress, not a live process: a trial must show some (a training step, an
    # evaluation batch, a generated batch) every progress_timeout seconds, and reach its first
    # step within setup_timeout (model, data, tokenization), else it is failed as `stalled`
    # and retried (max_retries). A supervisor kills a worker whose trial is past its deadline
    # by grace_period more (a stall that holds the GIL), and one that has not left
    # shutdown_grace seconds after a SIGTERM.
    progress_timeout: float = Field(default=600.0, gt=0)
    setup_timeout: float = Field(default=3600.0, gt=0)
    shutdown_grace: float = Field(default=30.0, gt=0)
    # Where specs may point: datasets only under data_roots; models under model_roots or as
    # hub ids. Lists are JSON in the environment: HPO_DATA_ROOTS='["/data", "/mnt/corpora"]'.
    data_roots: list[Path] = Field(default_factory=lambda: [Path(".")])
    model_roots: list[Path] = Field(default_factory=lambda: [Path(".")])
    # Failed token checks one client address may make per minute before it gets 429s.
    auth_failures_per_minute: int = Field(default=30, ge=1)
    # API load shedding: requests served at once (sized to the database pool, which gets as
    # many connections), requests that may wait for a turn, and how long they wait before a 503
    # with Retry-After. These counts, the failed-token limit and the file checks' are the whole
    # server's: `hpo serve --workers N` (api_processes) gives each process an Nth of each.
    api_processes: int = Field(default=1, ge=1)
    api_concurrency: int = Field(default=15, ge=1)
    api_queue: int = Field(default=200, ge=0)
    api_queue_timeout_s: float = Field(default=10.0, gt=0)
    # A request's headers must arrive within api_header_timeout_s (else the connection is closed)
    # and its body within api_body_timeout_s (else 408): slow senders hold nothing for long.
    api_header_timeout_s: float = Field(default=10.0, gt=0)
    api_body_timeout_s: float = Field(default=30.0, gt=0)
    # Requests without a valid token (none, a wrong one, the public pages, sign-in) never take
    # an owner's turn: at most api_anonymous run at once (then 503 at once), and each body must
    # arrive within api_anonymous_timeout_s (else 408).
    api_anonymous: int = Field(default=10, ge=1)
    api_anonymous_timeout_s: float = Field(default=5.0, gt=0)
    # Registration's file checks: their deadline (then 422), and how many may run at once per
    # owner and in all (then 429 / 503): a check stuck on a file cannot be cancelled, only
    # abandoned, so these bound the threads one owner can leave blocked.
    preflight_timeout_s: float = Field(default=20.0, gt=0)
    preflight_per_owner: int = Field(default=2, ge=1)
    preflight_threads: int = Field(default=16, ge=1)
    # Check at registration that local datasets and models exist and parse. Turn off only where
    # the API host cannot see the workers' files; workers then find the mistakes.
    verify_inputs: bool = True
    # Per-owner quotas (None: no limit). Active studies are running or paused ones: a
    # registration past the quota answers 429. Workers start no trial of an owner who has
    # max_running_trials_per_owner running.
    max_active_studies_per_owner: int | None = Field(default=100, ge=1)
    max_running_trials_per_owner: int | None = Field(default=None, ge=1)
    # Without max_running_trials_per_owner an owner may hold this share of the live fleet
    # (running trials and free workers, rounded up, at least one).
    max_fleet_share: float = Field(default=0.9, gt=0, le=1)
    # Preemption (README, "Availability: fair share and quotas"): a trial yields its worker to
    # a waiting owner below their share only after running min_slice_s in its segment, so two
    # owners do not trade a worker back and forth; a trial may run at most max_trial_s (a
    # spec's budget.max_trial_s may ask for less), which bounds one that cannot pause.
    min_slice_s: float = Field(default=120.0, ge=0)
    max_trial_s: float = Field(default=86400.0, gt=0)
    # Trials clients enqueued (POST /studies/{name}/trials) still waiting to start, per study
    # and per owner over all their studies: one more answers 429. A retry of one counts as it
    # did; trials the service queues itself (warm starts, continuations) count for nothing.
    max_queued_trials_per_study: int | None = Field(default=100, ge=1)
    max_queued_trials_per_owner: int | None = Field(default=1000, ge=1)
    # Bounds on the work a tenant's inputs cause (README, "Availability: bounded work").
    # Entries walked in a dataset or model folder, each checked against the roots.
    max_folder_entries: int = Field(default=100_000, ge=1)
    # Bytes registration reads of a data file's head (rows, CSV header) or a metadata file.
    preflight_read_bytes: int = Field(default=4 * 2**20, ge=1024)
    # Items a GGUF file's metadata may hold in all (arrays' items, tensors): a large vocabulary
    # is ~260k tokens and as many merges; each is walked before anything allocates.
    gguf_max_items: int = Field(default=4 * 2**20, ge=1)
    # Bytes one data row may hold (a JSONL line, a CSV row): checked while a worker streams the
    # file and in registration's head, before any parser holds the row.
    max_row_bytes: int = Field(default=2 * 2**20, ge=1024)
    # What a spec may allocate (hpo.core.estimate). worker_memory_gb: a trial's estimated peak
    # memory (weights, adapter and optimiser, activations, logits, generation's cache) at the
    # worst point of the search space; checked where registration can read the model's config.
    # The rest hold for every model: tokens in one forward pass (batch x max_seq_length, in
    # training and evaluation), tokens per optimiser step (x gradient accumulation), tokens one
    # evaluation generates (answers x max_new_tokens x num_beams) and per example trained.
    worker_memory_gb: float = Field(default=24.0, gt=0)
    max_batch_tokens: int = Field(default=2**20, ge=1)
    max_step_tokens: int = Field(default=2**24, ge=1)
    max_generated_tokens: int = Field(default=2**18, ge=1)
    max_generated_tokens_per_example: int = Field(default=4096, ge=1)
    # The memory a worker's trial process may use (worker.memory): its address space on CPU
    # (default worker_memory_gb + 4 GB for the runtime's libraries, stacks and arenas), the
    # share of the GPU's memory on CUDA (default: the whole GPU). Past it the trial fails with
    # reason `resources`, and the worker goes on.
    trial_memory_gb: float | None = Field(default=None, gt=0)
    # Seconds a worker may spend reading and preparing a dataset (tokenizing, rendering chat
    # templates) or rendering evaluation prompts, before the trial fails with reason deadline.
    prepare_timeout: float = Field(default=900.0, gt=0)
    # Executing a model repository's own code is an operator's decision, never a spec's.
    allow_trust_remote_code: bool = False

    @field_validator("database_url")
    @classmethod
    def _normalize(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("artifact_store", "s3_endpoint_url", mode="before")
    @classmethod
    def _unset_if_empty(cls, value: str | None) -> str | None:
        return value or None  # compose passes unset variables as ""

    @field_validator("artifact_store")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None and not S3_URL.fullmatch(value):
            raise ValueError(f"must be an s3://bucket[/prefix] URL, but got {value!r}")
        return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


# Counts one `hpo serve` process enforces on its own, in memory: with api_processes of them,
# each gets its share, so the server's totals (and its database connections) stay the settings'.
PER_PROCESS = (
    "api_concurrency",
    "api_queue",
    "auth_failures_per_minute",
    "preflight_per_owner",
    "preflight_threads",
)


def per_process(settings: Settings) -> Settings:
    """``settings`` with each in-memory limit divided among ``api_processes`` (at least 1)."""
    n = settings.api_processes
    if n == 1:
        return settings
    floor = {"api_queue": 0}
    return settings.model_copy(
        update={k: max(floor.get(k, 1), getattr(settings, k) // n) for k in PER_PROCESS}
    )
