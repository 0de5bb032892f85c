"""Helpers for tests that run real ``hpo worker`` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import optuna

from hpo.core.settings import Settings
from tests.specs import study_spec


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HPO_DATABASE_URL=settings.database_url,
        HPO_CACHE_DIR=str(settings.cache_dir),
        HPO_ARTIFACT_DIR=str(settings.artifact_dir),
        HPO_HEARTBEAT_INTERVAL=str(settings.heartbeat_interval),
        HPO_GRACE_PERIOD=str(settings.grace_period),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def start_worker(
    settings: Settings, log: Path, *args: str, injected: bool = False, **env: str
) -> subprocess.Popen[bytes]:
    """``hpo worker --device cpu ARGS`` as its own process, logging to ``log``.

    ``injected``: run ``tests.worker_process`` instead, whose options inject faults or a cheap
    objective through the worker's objective factory.
    """
    command = (
        ["-m", "tests.worker_process"]
        if injected
        else ["-m", "hpo", "worker", "--device", "cpu", "--cpu-threads", "1"]
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *command, *args],
            env=worker_env(settings, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def trials(settings: Settings, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=settings.database_url).get_trials()


def race_workers(
    api: Any,
    spawn: Callable[..., subprocess.Popen[bytes]],
    spec: dict[str, Any],
    *,
    count: int = 3,
) -> dict[str, Any]:
    """Register ``spec`` through ``api`` (a test server) and run ``count`` injected worker
    processes side by side (they start together behind a barrier and exit once idle); the
    study as the API shows it afterwards."""
    with api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        workers = [
            spawn(
                api.settings,
                f"w{i}",
                "--cheap",
                "--barrier",
                str(count),
                "--idle-exit",
                "3",
                injected=True,
            )
            for i in range(count)
        ]
        assert [w.wait(timeout=240) for w in workers] == [0] * count
        study: dict[str, Any] = client.get(f"/studies/{spec['name']}").json()
    return study


def small_study(name: str, **parts: Any) -> dict[str, Any]:
    """A study whose trials take a second or two on the tiny model on CPU."""
    defaults: dict[str, Any] = {
        "model": {"name_or_path": "builtin:tiny-llama"},
        "dataset": {
            "path": "builtin:demo-text",
            "max_train_examples": 256,
            "max_eval_examples": 64,
        },
        "space": {
            "learning_rate": {"type": "float", "low": 1e-5, "high": 3e-2, "log": True},
            "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16]},
            "lora_r": {"type": "categorical", "choices": [4, 8]},
        },
        "training": {"num_train_epochs": 1, "max_seq_length": 32},
        "sampler": {"type": "tpe", "seed": 7, "n_startup_trials": 4},
        "pruner": {"type": "percentile", "percentile": 25.0, "n_startup_trials": 2},
        "budget": {"max_trials": 8},
        "evaluation": {"every_examples": 64},
    }
    return study_spec(name, **{**defaults, **parts})


def wait_healthy(base_url: str, *, timeout: float = 60) -> None:
    """Wait until the API at ``base_url`` answers ``/healthz`` with 200."""

    def healthy() -> bool:
        try:
            return httpx.get(f"{base_url}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout=timeout, what=f"{base_url}/healthz")


def log_events(log: Path, event: str) -> list[dict[str, Any]]:
    """The JSON events named ``event`` in a worker's or supervisor's log file."""
    found = []
    for line in log.read_text().splitlines():
        text = line.split(" ", 3)[-1]
        if text.startswith("{") and f'"{event}"' in text:
            found.append(json.loads(text))
    return [e for e in found if e["event"] == event]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
