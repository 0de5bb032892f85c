"""Schedulers on real workers: a paused trial keeps its state and a continuation trains on
from it; racing workers continue a paused trial once; the budget counts configurations."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import load_file
from sqlalchemy import select
from typer.testing import CliRunner

from hpo.cli import app
from hpo.core.artifacts import CHECKPOINT, unpack
from hpo.core.db import ArtifactRecord, Database, session_scope
from hpo.core.records import (
    CONTINUES_ATTR,
    COOLED_ATTR,
    LINEAGE_ATTR,
    PAUSED_AT_ATTR,
    RESUMED_VALUE_ATTR,
    UNTIL_ATTR,
)
from hpo.core.schedulers import Decision
from hpo.core.schedulers.builder import SCHEDULERS
from hpo.core.schedulers.rungs import configurations
from hpo.core.schedulers.top_k import TopKScheduler
from hpo.core.settings import Settings
from hpo.core.spec import SearchSpec, StudySpec, TopKSchedulerSpec
from tests.conftest import ApiServer
from tests.specs import minimal_spec
from tests.worker_process import cheap_objective
from tests.workers import race_workers, small_study, trials, wait_until
from worker.loop import Candidate, Worker
from worker.objective import WorkerContext

Spawn = Callable[..., subprocess.Popen[bytes]]
Objective = Callable[[optuna.Trial], float]
TOP_1_OF_2 = {"type": "top_k", "at_steps": 64, "k": 1, "min_scored": 2}
CONFIG = {"learning_rate": 3e-3, "per_device_train_batch_size": 8, "lora_r": 4}


def _run_worker(settings: Settings) -> None:
    Worker(settings, idle_exit=0.5, cpu_threads=1).run(handle_signals=False)


def _checkpoints(settings: Settings) -> set[int]:
    with session_scope(Database(settings.database_url).sessions) as session:
        return set(
            session.scalars(
                select(ArtifactRecord.trial_number).where(ArtifactRecord.kind == CHECKPOINT)
            )
        )


def _register_two_configurations(client: Any, spec: dict[str, Any]) -> None:
    """Register ``spec`` and queue CONFIG and the same with rank 8."""
    assert client.post("/studies", json=spec).status_code == 201
    for config in (CONFIG, {**CONFIG, "lora_r": 8}):
        queued = client.post(f"/studies/{spec['name']}/trials", json={"params": config})
        assert queued.status_code == 201


@pytest.mark.slow
def test_a_paused_trial_continues_where_it_stopped(pg_api: ApiServer) -> None:
    """Two configurations score at 64 examples and pause; the better one continues from its
    saved state: its loss on the evaluation examples at resume is the loss it paused with,
    its curve goes on at 128, and it ends exactly where the same configuration trained
    without a pause ends (same data order, same dropout: a continuation, not a restart)."""
    spec = small_study(
        "paused", pruner={"type": "none"}, scheduler=TOP_1_OF_2, budget={"max_trials": 2}
    )
    plain = small_study("plain", pruner={"type": "none"}, budget={"max_trials": 1})
    with pg_api.client() as client:
        _register_two_configurations(client, spec)
        _run_worker(pg_api.settings)
        study = client.get("/studies/paused").json()
        env = {"HPO_API_URL": pg_api.base_url, "HPO_TOKEN": pg_api.token("alice")}
        shown = CliRunner().invoke(app, ["study", "show", "paused"], env=env)
        listed = CliRunner().invoke(
            app, ["study", "trials", "paused", "--state", "paused", "--json"], env=env
        )
        first, second, last = trials(pg_api.settings, "paused")
        parent = (first, second)[last.user_attrs[CONTINUES_ATTR]]
        assert client.post("/studies", json=plain).status_code == 201
        queued = client.post("/studies/plain/trials", json={"params": parent.params})
        assert queued.status_code == 201
        _run_worker(pg_api.settings)
    assert [t.state for t in (first, second)] == [TrialState.PRUNED] * 2
    assert all(t.user_attrs[PAUSED_AT_ATTR] == 64 for t in (first, second))
    assert _checkpoints(pg_api.settings) == {0, 1}
    assert last.state == TrialState.COMPLETE
    assert last.params == parent.params
    assert last.user_attrs[RESUMED_VALUE_ATTR] == pytest.approx(
        parent.intermediate_values[64], rel=1e-6
    )
    assert sorted(last.intermediate_values) == [64, 128, 192, 256]
    assert last.intermediate_values[64] == parent.intermediate_values[64]
    assert last.user_attrs["examples_seen"] == 256
    assert last.user_attrs["examples_trained"] == 256 - 64
    assert [t.user_attrs["examples_trained"] for t in (first, second)] == [64, 64]
    (uninterrupted,) = trials(pg_api.settings, "plain")
    assert last.intermediate_values == pytest.approx(uninterrupted.intermediate_values, rel=1e-5)
    assert study["status"] == "completed"
    assert "configurations" in study["status_reason"]
    # Both configurations paused at 64 (their segments count as paused, not as pruned); one
    # continued to its end.
    counts = study["trials"]
    assert (counts["complete"], counts["pruned"], counts["paused"]) == (1, 0, 2)
    assert counts["finished"] == 3
    assert shown.exit_code == 0, shown.output
    assert "(1 complete, 0 pruned, 2 paused)" in shown.stdout
    assert listed.exit_code == 0, listed.output
    assert [t["number"] for t in json.loads(listed.stdout)] == [first.number, second.number]


@pytest.mark.slow
def test_cool_down_scores_rank_paused_trials_that_continue_from_the_stable_state(
    pg_api: ApiServer,
) -> None:
    """With ``cooldown`` each paused configuration carries its score after a decay branch;
    the better cooled score continues, from the stable checkpoint: its loss at resume is the
    loss it paused with, not the cooled one."""
    training = {
        "num_train_epochs": 1,
        "max_seq_length": 32,
        "lr_scheduler_type": "warmup_stable_decay",
    }
    spec = small_study(
        "cool",
        pruner={"type": "none"},
        training=training,
        scheduler={**TOP_1_OF_2, "cooldown": True},
        budget={"max_trials": 2},
    )
    with pg_api.client() as client:
        _register_two_configurations(client, spec)
        _run_worker(pg_api.settings)
        study = client.get("/studies/cool").json()
    first, second, last = trials(pg_api.settings, "cool")
    cooled = {t.number: t.user_attrs[COOLED_ATTR] for t in (first, second)}
    for t in (first, second):
        assert t.user_attrs[PAUSED_AT_ATTR] == 64
        assert cooled[t.number] != t.intermediate_values[64]  # it trained on as it decayed
    parent = (first, second)[last.user_attrs[CONTINUES_ATTR]]
    assert parent.number == min(cooled, key=lambda n: cooled[n])
    assert last.user_attrs[RESUMED_VALUE_ATTR] == pytest.approx(
        parent.intermediate_values[64], rel=1e-6
    )
    assert last.state == TrialState.COMPLETE and COOLED_ATTR not in last.user_attrs
    assert last.user_attrs["examples_trained"] == 256 - 64
    assert study["status"] == "completed"


def _paused_study(settings: Settings, name: str) -> None:
    """Give a registered study one configuration, paused at step 1."""
    study = optuna.load_study(study_name=name, storage=settings.database_url)
    paused = optuna.trial.create_trial(
        state=TrialState.PRUNED,
        params={"learning_rate": 1e-3},
        distributions={"learning_rate": FloatDistribution(1e-5, 1e-2, log=True)},
        intermediate_values={1: 0.5},
        user_attrs={UNTIL_ATTR: 1, PAUSED_AT_ATTR: 1},
    )
    study.add_trial(paused)


@pytest.mark.slow
def test_racing_workers_continue_a_paused_trial_exactly_once(pg_api: ApiServer) -> None:
    """Four workers decide at the same instant on a study whose one paused configuration is
    the only work: one continuation is queued, and one worker runs it."""
    spec = minimal_spec(
        "race",
        space={"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}},
        scheduler={"type": "top_k", "at_steps": 1, "k": 1, "min_scored": 1},
        budget={"max_trials": 1},
    )
    with pg_api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
    _paused_study(pg_api.settings, "race")
    workers = [Worker(pg_api.settings, objective_factory=cheap_objective) for _ in range(4)]
    candidates: list[Candidate | None] = [
        w._candidate(next(load for load in w._scan() if load.name == "race")) for w in workers
    ]
    assert all(c is not None for c in candidates)
    barrier = threading.Barrier(len(workers))
    ran: list[bool] = []

    def race(worker: Worker, candidate: Candidate) -> None:
        barrier.wait()
        ran.append(worker._run_one(candidate))  # noqa: SLF001

    threads = [
        threading.Thread(target=race, args=(w, c))
        for w, c in zip(workers, candidates, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for worker in workers:
        worker.close()
    assert sorted(ran) == [False, False, False, True]
    paused, continued = trials(pg_api.settings, "race")
    assert continued.user_attrs[CONTINUES_ATTR] == paused.number
    assert continued.state == TrialState.COMPLETE
    assert continued.intermediate_values[1] == 0.5  # the paused curve, carried on


def test_each_claim_takes_one_scheduler_decision(
    pg_api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the worker's whole claim path (scan, closer look, lock, claim), a new
    configuration and then the continuation of its paused segment each cost the scheduler
    one decision."""
    spec = minimal_spec(
        "one-decision",
        space={"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}},
        scheduler={"type": "top_k", "at_steps": 1, "k": 1, "min_scored": 1},
        budget={"max_trials": 1},
    )
    with pg_api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
    decisions: list[bool] = []

    class Counted(TopKScheduler):
        def decide(
            self,
            trials: Sequence[FrozenTrial],
            *,
            can_start: bool,
            seed: int,
            left: float | None = None,
        ) -> Decision:
            decisions.append(can_start)
            return super().decide(trials, can_start=can_start, seed=seed, left=left)

    def counted(search: SearchSpec) -> Counted:
        assert isinstance(search.scheduler, TopKSchedulerSpec)
        return Counted(search.scheduler)

    monkeypatch.setitem(SCHEDULERS, "top_k", counted)
    at_claim: list[int] = []

    def objective(ctx: WorkerContext, spec: StudySpec, **kwargs: Any) -> Objective:
        cheap = cheap_objective(ctx, spec, **kwargs)

        def run(trial: optuna.Trial) -> float:
            at_claim.append(len(decisions))  # the trial was claimed: its decisions were taken
            return cheap(trial)

        return run

    worker = Worker(pg_api.settings, studies=["one-decision"], objective_factory=objective)
    per_claim = []
    try:
        for _ in range(2):
            before = len(decisions)
            assert worker._run_next()  # noqa: SLF001
            per_claim.append(at_claim[-1] - before)
    finally:
        worker.close()
    assert per_claim == [1, 1]
    first, continued = trials(pg_api.settings, "one-decision")
    assert continued.user_attrs[CONTINUES_ATTR] == first.number
    assert continued.state == TrialState.COMPLETE


def _segments_of(all_trials: list[FrozenTrial]) -> dict[int, list[int]]:
    continued: dict[int, list[int]] = {}
    for t in all_trials:
        if CONTINUES_ATTR in t.user_attrs:
            continued.setdefault(t.user_attrs[CONTINUES_ATTR], []).append(t.number)
    return continued


@pytest.mark.slow
@pytest.mark.parametrize(
    "scheduler",
    [
        {"type": "asha", "min_steps": 1, "reduction_factor": 3},
        {"type": "top_k", "at_steps": 1, "k": 3, "min_scored": 4},
    ],
    ids=lambda s: s["type"],
)
def test_racing_worker_processes_keep_the_budget_with_promotions(
    pg_api: ApiServer, spawn_worker: Spawn, scheduler: dict[str, Any]
) -> None:
    """Three worker processes start side by side on a scheduled study: exactly max_trials
    configurations start, no paused trial is continued twice, nothing is left queued or
    running, and the study ends completed."""
    spec = minimal_spec(
        f"budget-{scheduler['type']}",
        space={
            "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
            "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.1},
        },
        sampler={"type": "random", "seed": 5},
        scheduler=scheduler,
        budget={"max_trials": 12},
    )
    study = race_workers(pg_api, spawn_worker, spec)
    done = trials(pg_api.settings, spec["name"])
    assert {t.state for t in done} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert len(configurations(done)) == 12
    continued = _segments_of(done)
    assert continued, "some configuration was promoted"
    assert all(len(numbers) == 1 for numbers in continued.values()), continued
    assert all(done[p].user_attrs.get(PAUSED_AT_ATTR) is not None for p in continued)
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    assert all(sorted(t.intermediate_values) == [1, 2, 3] for t in complete)
    assert study["status"] == "completed", study["status_reason"]
    assert study["best_trial"] in {t.number for t in complete}


@pytest.mark.slow
def test_killed_workers_lose_at_most_the_segment_they_ran(
    pg_api: ApiServer, spawn_worker: Spawn
) -> None:
    """kill -9 a worker while one configuration is paused and another mid-segment, then
    the next one mid-continuation: the paused state survives, each dead segment is retried
    from where it started, and the study ends with its budget as if nobody died."""
    spec = small_study(
        "killed", pruner={"type": "none"}, scheduler=TOP_1_OF_2, budget={"max_trials": 2}
    )
    with pg_api.client() as client:
        _register_two_configurations(client, spec)

        def now() -> list[FrozenTrial]:
            return trials(pg_api.settings, "killed")

        slow = ("--slow-steps", "0.5")
        first = spawn_worker(pg_api.settings, "a", *slow, injected=True)
        wait_until(
            lambda: (
                any(PAUSED_AT_ATTR in t.user_attrs for t in now())
                and any(t.state == TrialState.RUNNING for t in now())
            ),
            timeout=300,
            what="one paused, one running",
        )
        first.kill()
        assert first.wait(timeout=30) == -9
        second = spawn_worker(pg_api.settings, "b", *slow, injected=True)
        wait_until(
            lambda: any(
                t.state == TrialState.RUNNING and CONTINUES_ATTR in t.user_attrs for t in now()
            ),
            timeout=300,
            what="a continuation running",
        )
        second.kill()
        assert second.wait(timeout=30) == -9
        last = spawn_worker(pg_api.settings, "c", "--idle-exit", "15")
        assert last.wait(timeout=600) == 0
        study = client.get("/studies/killed").json()
    done = now()
    assert study["status"] == "completed", study["status_reason"]
    assert len(configurations(done)) == 2
    assert {t.state for t in done} <= {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    retried = {t.user_attrs.get("retried_from"): t for t in done}
    dead = [t for t in done if t.state == TrialState.FAIL]
    assert len(dead) >= 2
    for t in dead:  # each killed segment ran again, from the state it had started from
        assert t.user_attrs["fail_reason"].startswith("stale")
        assert retried[t.number].user_attrs.get(CONTINUES_ATTR) == t.user_attrs.get(CONTINUES_ATTR)
    (final,) = [t for t in done if t.state == TrialState.COMPLETE]
    parent = done[final.user_attrs[CONTINUES_ATTR]]
    assert parent.user_attrs[PAUSED_AT_ATTR] == 64
    assert final.user_attrs[RESUMED_VALUE_ATTR] == pytest.approx(
        parent.intermediate_values[64], rel=1e-6
    )
    assert final.user_attrs["examples_trained"] == 256 - 64


@pytest.mark.slow
def test_a_pbt_exploit_starts_from_exactly_the_state_it_copied(
    pg_api: ApiServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    """A member that exploits starts training with the adapter weights and the optimizer
    moments its donor saved, tensor for tensor, under its own perturbed learning rate and
    weight decay; its lineage names the donor, the step and each perturbation."""
    spec = small_study(
        "pbt",
        space={
            "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
            "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
        },
        sampler={"type": "random", "seed": 2},
        pruner={"type": "none"},
        scheduler={"type": "pbt", "population_size": 2, "interval_steps": 64, "quantile": 0.5},
        budget={"max_trials": 2},
    )
    states = tmp_path / "states"
    with pg_api.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        worker = spawn_worker(
            pg_api.settings, "w", "--record-state", str(states), "--idle-exit", "5", injected=True
        )
        assert worker.wait(timeout=600) == 0
        study = client.get("/studies/pbt").json()
        listed = {t["number"]: t for t in client.get("/studies/pbt/trials").json()["data"]}
    assert study["status"] == "completed", study["status_reason"]
    done = trials(pg_api.settings, "pbt")
    exploits = [t for t in done if LINEAGE_ATTR in t.user_attrs]
    assert exploits, "the worse of two members copies the better at its first interval"
    for member in exploits:
        lineage = member.user_attrs[LINEAGE_ATTR]
        assert listed[member.number]["user_attrs"][LINEAGE_ATTR] == lineage  # shown by REST
        donor = done[lineage["parent"]]
        assert member.user_attrs[CONTINUES_ATTR] == donor.number
        assert lineage["step"] == max(donor.intermediate_values)
        for change in lineage["perturbations"]:
            assert donor.params[change["name"]] == change["old"]
            assert member.params[change["name"]] == change["new"]
        saved = _checkpoint_of(pg_api.settings, donor, tmp_path / f"donor{donor.number}")
        started = torch.load(states / f"trial{member.number}.pt", weights_only=False)
        adapter = load_file(saved / "adapter_model.safetensors")
        assert adapter.keys() == started["adapter"].keys()
        assert all(torch.equal(adapter[k], started["adapter"][k]) for k in adapter)
        moments = torch.load(saved / "optimizer.pt", weights_only=True)["state"]
        assert moments.keys() == started["optimizer"]["state"].keys()
        for index, state in moments.items():
            for name, tensor in state.items():
                assert torch.equal(tensor, started["optimizer"]["state"][index][name]), name
        decay = started["optimizer"]["param_groups"][0]
        assert decay["initial_lr"] == member.params["learning_rate"]
        assert decay["weight_decay"] == member.params["weight_decay"]


def _checkpoint_of(settings: Settings, trial: FrozenTrial, target: Path) -> Path:
    with session_scope(Database(settings.database_url).sessions) as session:
        record = session.scalars(
            select(ArtifactRecord).where(
                ArtifactRecord.trial_number == trial.number, ArtifactRecord.kind == CHECKPOINT
            )
        ).one()
        unpack(settings, record.artifact_id, target)
    return target
