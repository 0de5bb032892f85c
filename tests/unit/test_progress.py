"""Progress as SQL over Optuna's tables, on the embedded SQLite database: counts, pages, sums
and the best trial, with a neighbouring study and infeasible records kept out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from hpo.core import records
from hpo.core.db import ArtifactRecord, Database, StudyRecord
from hpo.core.migrate import upgrade
from hpo.core.optuna_tables import study_id, trial_id
from hpo.core.progress import (
    best_ties,
    best_trial,
    saturation_note,
    trial_counts,
    trial_page,
    user_attr_sum,
)
from hpo.core.settings import Settings
from hpo.core.storage import HeartbeatStorage, make_storage

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[HeartbeatStorage]:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    upgrade(url)
    storage = make_storage(Settings(database_url=url))
    yield storage
    storage.engine.dispose()


def _study(storage: HeartbeatStorage, name: str, direction: str = "minimize") -> optuna.Study:
    return optuna.create_study(storage=storage, study_name=name, direction=direction)


def test_counts_pages_and_sums(storage: HeartbeatStorage) -> None:
    study = _study(storage, "s")
    for value, seconds in ((3.0, 10.0), (1.0, 20.0)):
        trial = study.ask()
        records.record_device_time(trial, seconds, gpu=False)
        study.tell(trial, value)
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    study.add_trial(
        create_trial(state=TrialState.PRUNED, user_attrs={records.INFEASIBLE_RECORD_ATTR: 0})
    )
    _study(storage, "neighbour").ask()
    counts = trial_counts(storage, study_id(study))
    assert (counts.complete, counts.pruned, counts.running, counts.finished) == (2, 1, 0, 3)
    page, total = trial_page(storage, study_id(study), offset=1, limit=2)
    assert total == 4 and [t.number for t in page] == [1, 2]
    pruned_page, n = trial_page(
        storage, study_id(study), offset=0, limit=9, state=TrialState.PRUNED
    )
    assert n == 2 and [t.number for t in pruned_page] == [2, 3]
    assert user_attr_sum(storage, study_id(study), records.DEVICE_SECONDS_ATTR) == 30.0


def test_a_paused_trial_counts_as_paused_not_pruned(storage: HeartbeatStorage) -> None:
    study = _study(storage, "s")
    paused, pruned, running = study.ask(), study.ask(), study.ask()
    records.mark_paused(paused, at=64, reason="paused at 64 examples (rung 64)")
    records.set_prune_reason(pruned, "pruner")
    for trial in (paused, pruned):
        study.tell(trial, state=TrialState.PRUNED)
    records.mark_paused(running, at=64, reason="not told yet")  # RUNNING until it is told
    counts = trial_counts(storage, study_id(study))
    assert (counts.pruned, counts.paused, counts.running, counts.finished) == (1, 1, 1, 2)
    page, n = trial_page(storage, study_id(study), offset=0, limit=9, state="paused")
    assert n == 1 and [t.number for t in page] == [paused.number]


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_the_best_trial_prefers_a_stored_adapter_then_the_earliest(
    storage: HeartbeatStorage, direction: str
) -> None:
    study = _study(storage, "tie", direction)
    best, worse = (0.2, 0.9) if direction == "minimize" else (0.9, 0.2)
    ids = []
    for value in (worse, best, best, best):
        trial = study.ask()
        study.tell(trial, value)
        ids.append(trial_id(trial))
    assert best_trial(storage, study_id(study)).number == 1  # the earliest of the tie
    with Database(storage.engine).session() as session:
        session.add(StudyRecord(name="tie", owner="o", spec={}, status="running"))
        session.flush()
        session.add(
            ArtifactRecord(
                artifact_id="a" * 36, study_id=1, trial_id=ids[3], trial_number=3, kind="adapter"
            )
        )
    assert best_trial(storage, study_id(study)).number == 3  # the one with an adapter


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_among_equal_values_the_lowest_tie_break_wins_before_an_adapter(
    storage: HeartbeatStorage, direction: str
) -> None:
    """A saturated metric (every trial 1.0): the trial of lowest eval_loss is the best, ahead
    of the earliest and of one with an adapter; a trial without a tie-break comes last."""
    study = _study(storage, "sat", direction)
    ids = []
    for tie in (None, 0.5, 0.0124, 0.000148, 0.3):
        trial = study.ask()
        if tie is not None:
            trial.set_user_attr(records.TIE_BREAK_ATTR, tie)
        study.tell(trial, 1.0)
        ids.append(trial_id(trial))
    worse = study.ask()
    worse.set_user_attr(records.TIE_BREAK_ATTR, 0.0)
    study.tell(worse, 0.5 if direction == "maximize" else 2.0)
    with Database(storage.engine).session() as session:
        session.add(StudyRecord(name="sat", owner="o", spec={}, status="running"))
        session.flush()
        session.add(
            ArtifactRecord(
                artifact_id="a" * 36, study_id=1, trial_id=ids[1], trial_number=1, kind="adapter"
            )
        )
    assert best_trial(storage, study_id(study)).number == 3
    assert best_ties(storage, study_id(study)) == 5
    note = saturation_note("exact_match", 1.0, 5, "eval_loss")
    assert note is not None and "5 complete trials" in note and "eval_loss" in note
    assert saturation_note("exact_match", 1.0, 1, "eval_loss") is None


def test_no_finite_complete_trial_means_no_best(storage: HeartbeatStorage) -> None:
    study = _study(storage, "none")
    study.tell(study.ask(), state=TrialState.PRUNED)
    assert best_trial(storage, study_id(study)) is None
    assert best_ties(storage, study_id(study)) == 0
