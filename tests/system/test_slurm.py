"""deploy/slurm/hpo-worker.sbatch on a real one-node SLURM cluster (slurmctld + slurmd +
munged, started here as root): an array of CPU workers against the test PostgreSQL (outside the
allocation) finishes a study with exactly its budget, although one task is cancelled mid-trial.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hpo.core import records
from tests import slurm
from tests.conftest import ApiServer
from tests.workers import small_study, trials, wait_until, worker_env
from worker.callbacks import INTERRUPTED

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "slurm" / "hpo-worker.sbatch"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(slurm.missing() is not None, reason=str(slurm.missing())),
]


@pytest.fixture
def cluster() -> Iterator[slurm.SlurmCluster]:
    started = slurm.SlurmCluster()
    yield started
    started.stop()


def test_an_array_finishes_the_study_through_a_cancelled_task(
    pg_api: ApiServer, cluster: slurm.SlurmCluster, tmp_path: Path
) -> None:
    settings = pg_api.settings
    budget = 4
    # Trials of a few seconds, so the cancel finds one training.
    spec = small_study(
        "on-slurm",
        budget={"max_trials": budget},
        pruner={"type": "none"},
        training={"num_train_epochs": 4, "max_seq_length": 32},
    )
    with pg_api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
    env = worker_env(
        settings,
        # The project's interpreter and this checkout's code, as an installed `hpo` would be.
        PATH=f"{Path(sys.executable).parent}:{cluster.path}",
        PYTHONPATH=str(ROOT),
        HPO_IDLE_EXIT="8",
    )
    # No GPU here: the script's `--gres=gpu:1` gives way, and `--gpus all` falls back to CPU.
    job = cluster.sbatch(
        "--array=0-1",
        "--gres=none",
        "--cpus-per-task=1",
        f"--output={tmp_path}/task-%a.out",
        str(SCRIPT),
        env=env,
    )

    def training() -> list[tuple[int, str]]:
        return [
            (t.number, t.user_attrs["worker"])
            for t in trials(settings, "on-slurm")
            if t.state == TrialState.RUNNING and "setup_seconds" in t.user_attrs
        ]

    number, worker = wait_until(training, timeout=120, what="a task training")[0]
    task = next(i for i in (0, 1) if worker in (tmp_path / f"task-{i}.out").read_text())
    cluster.scancel(f"{job}_{task}")
    wait_until(lambda: not cluster.jobs(job), timeout=150, what="both tasks to end")

    everything = trials(settings, "on-slurm")
    finished = [
        t
        for t in everything
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and records.yielded(t) is None
    ]
    assert len(finished) == budget
    assert not [t for t in everything if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    cancelled = everything[number]  # paused where it was, its state kept
    assert cancelled.state == TrialState.PRUNED
    assert (records.yielded(cancelled) or "").startswith(INTERRUPTED)
    continued = [t for t in everything if records.continues(t) == number]
    assert [t.state for t in continued] == [TrialState.COMPLETE]
    assert continued[0].params == cancelled.params
    assert worker not in continued[0].user_attrs["worker"]  # the other task ran it
