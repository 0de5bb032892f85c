"""Guard: Optuna still calls the private ``RDBStorage`` methods ``HeartbeatStorage`` overrides.

``HeartbeatStorage`` (hpo/core/storage.py) writes a trial's first heartbeat and takes the claim
gate in ``_create_new_trial`` (what Optuna's cache layer calls from ``Study.ask``), and adopts
orphaned RUNNING trials in ``_get_stale_trial_ids`` (what ``fail_stale_trials`` calls). If Optuna
upgrade stops calling them, nothing errors: our overrides just silently stop running. The spies
wrap OUR methods, so the real calls (and the real SQLite database) still do the work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from unittest import mock

import optuna
import pytest
from optuna.storages import RDBStorage, fail_stale_trials

from hpo.core.factory import NumberedQMCSampler
from hpo.core.settings import Settings
from hpo.core.storage import HeartbeatStorage, make_storage


def _upgrade_message(method: str, caller: str) -> str:
    return (
        f"Optuna {optuna.__version__} no longer calls RDBStorage.{method} from {caller}: an "
        f"Optuna upgrade changed the private storage API that HeartbeatStorage.{method} "
        "(hpo/core/storage.py) overrides, so our override is silently skipped. Adapt "
        "HeartbeatStorage to the new Optuna before moving the optuna pin in pyproject.toml."
    )


@contextmanager
def _spy(method: str, caller: str) -> Iterator[mock.MagicMock]:
    assert callable(vars(RDBStorage).get(method)), _upgrade_message(method, caller)
    original = vars(HeartbeatStorage)[method]
    with mock.patch.object(HeartbeatStorage, method, autospec=True, side_effect=original) as spy:
        yield spy
    assert spy.called, _upgrade_message(method, caller)


@pytest.fixture
def storage(sqlite_url: str) -> Iterator[HeartbeatStorage]:
    storage = make_storage(Settings(database_url=sqlite_url, heartbeat_interval=1, grace_period=2))
    yield storage
    storage.engine.dispose()


def _create(storage: HeartbeatStorage) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name="hooks")


def _load(storage: HeartbeatStorage) -> optuna.Study:
    optuna.create_study(storage=storage, study_name="hooks")
    return optuna.load_study(storage=storage, study_name="hooks")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study")
@pytest.mark.parametrize("open_study", [_create, _load], ids=["create_study", "load_study"])
def test_ask_reaches_create_new_trial(
    storage: HeartbeatStorage, open_study: Callable[[HeartbeatStorage], optuna.Study]
) -> None:
    study = open_study(storage)
    with _spy("_create_new_trial", "Study.ask()") as spy:
        trial = study.ask()
    assert spy.call_count == 1
    assert spy.call_args.args[:2] == (storage, study._study_id)
    assert study.trials[trial.number].state == optuna.trial.TrialState.RUNNING


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_fail_stale_trials_reaches_get_stale_trial_ids(storage: HeartbeatStorage) -> None:
    study = _create(storage)
    with _spy("_get_stale_trial_ids", "optuna.storages.fail_stale_trials()") as spy:
        fail_stale_trials(study)
    spy.assert_called_once_with(storage, study._study_id)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_qmc_sampling_reaches_find_sample_id(storage: HeartbeatStorage) -> None:
    """``NumberedQMCSampler`` (hpo/core/factory.py) picks QMC points by trial number through
    Optuna's private ``QMCSampler._find_sample_id``."""
    space = {name: optuna.distributions.FloatDistribution(0, 1) for name in ("x", "y")}
    sampler = NumberedQMCSampler(space, seed=0, warn_independent_sampling=False)
    study = optuna.create_study(storage=storage, study_name="qmc", sampler=sampler)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_float("y", 0, 1), n_trials=1)
    method, caller = "_find_sample_id", "QMCSampler.sample_relative()"
    assert callable(vars(optuna.samplers.QMCSampler).get(method)), _upgrade_message(method, caller)
    with mock.patch.object(
        NumberedQMCSampler, method, autospec=True, side_effect=vars(NumberedQMCSampler)[method]
    ) as spy:
        study.optimize(
            lambda t: t.suggest_float("x", 0, 1) + t.suggest_float("y", 0, 1), n_trials=2
        )
    assert spy.call_count == 2, _upgrade_message(method, caller)
