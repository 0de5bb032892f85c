"""PostgreSQL restarts while two workers train and the API serves: 503 meanwhile, then all
recovers without restarting anything, and the budget still holds exactly."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from optuna.trial import TrialState

from hpo.core.migrate import upgrade
from hpo.core.settings import Settings
from tests.conftest import ApiServer
from tests.pg import PostgresCluster
from tests.workers import small_study, trials, wait_until

pytestmark = pytest.mark.slow
Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster of this test's own: stopping it must not disturb the shared one."""
    cluster = PostgresCluster()
    yield cluster
    cluster.stop()


def test_restart_mid_study(
    own_cluster: PostgresCluster, spawn_worker: Spawn, tmp_path: Path, model_cache_dir: Path
) -> None:
    url = own_cluster.url()
    upgrade(url)
    settings = Settings(
        database_url=url,
        artifact_dir=tmp_path / "artifacts",
        cache_dir=model_cache_dir,
        heartbeat_interval=1,
        grace_period=4,
    )
    spec = small_study(
        "restart",
        budget={"max_trials": 6},
        pruner={"type": "none"},
        training={"num_train_epochs": 3, "max_seq_length": 32},
    )
    with ApiServer(settings) as api, api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        workers = [spawn_worker(settings, f"w{i}", "--idle-exit", "30") for i in range(2)]
        wait_until(
            lambda: any(t.intermediate_values for t in trials(settings, "restart")),
            timeout=120,
            what="a reported value",
        )
        before = {t.number: dict(t.intermediate_values) for t in trials(settings, "restart")}

        own_cluster._run(
            [own_cluster.pg_ctl, "-D", str(own_cluster.data), "-m", "fast", "-w", "stop"]
        )
        # The API answers at once, not after a hang (each request has the client's timeout).
        outage = [
            client.get("/studies/restart"),
            client.get("/studies"),
            httpx.get(f"{api.base_url}/healthz", timeout=30),
        ]
        assert [r.status_code for r in outage] == [503, 503, 503]
        assert all(r.json()["detail"] for r in outage[:2])
        assert outage[2].json() == {"status": "unavailable", "database": "unreachable"}
        time.sleep(3)  # an outage of some seconds, during which the workers keep training
        own_cluster.start()

        assert [w.wait(timeout=300) for w in workers] == [0, 0]
        study = client.get("/studies/restart").json()
    after = trials(settings, "restart")
    finished = [t for t in after if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    assert study["trials"]["finished"] == 6
    assert not [t for t in after if t.state == TrialState.RUNNING]
    for number, values in before.items():
        assert values.items() <= after[number].intermediate_values.items()
    # The outage is logged as what it was, not as Optuna's follow-up error from `tell`.
    logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(2))
    assert "UnboundLocalError" not in logs
    outages = [line for line in logs.splitlines() if '"database_unavailable"' in line]
    assert all("OperationalError" in line or "psycopg2" in line for line in outages), outages


def test_an_idle_worker_leaves_a_lost_database(
    own_cluster: PostgresCluster, spawn_worker: Spawn, tmp_path: Path, model_cache_dir: Path
) -> None:
    """--idle-exit counts time without a trial, failing polls included: a worker told to leave
    when idle does not retry a lost database forever."""
    url = own_cluster.url()
    upgrade(url)
    settings = Settings(database_url=url, cache_dir=model_cache_dir)
    worker = spawn_worker(settings, "w", "--idle-exit", "10")
    wait_until(
        lambda: '"worker_start"' in (tmp_path / "w.log").read_text(),
        timeout=120,
        what="the worker to start",
    )
    own_cluster._run([own_cluster.pg_ctl, "-D", str(own_cluster.data), "-m", "fast", "-w", "stop"])
    assert worker.wait(timeout=120) == 0
    assert '"database_unavailable"' in (tmp_path / "w.log").read_text()
