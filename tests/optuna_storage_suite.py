"""Optuna 5.0.0's storage contract tests, vendored to run against our ``HeartbeatStorage``.

VENDORED CODE. Source: the Optuna 5.0.0 sdist (https://pypi.org/project/optuna/5.0.0/,
https://github.com/optuna/optuna/tree/v5.0.0/tests/storages_tests), files
``tests/storages_tests/{test_storages,test_heartbeat,test_callbacks,test_cached_storage,
test_with_server}.py``. Optuna is MIT-licensed: Copyright (c) 2018 Preferred Networks, Inc.;
permission is granted to use, copy, modify and distribute it provided this copyright notice
and the MIT permission notice (https://opensource.org/license/mit, also in Optuna's LICENSE
file) are included.

Why vendored: the wheel ships only ``optuna.testing.pytest_storages.StorageTestCase``; these
tests (the heartbeat / stale-trial / retry tests our subclass most depends on, the cached
storage and multi-process ones) exist only in the sdist, and they get their storages from
``optuna.testing.storages`` (which imports ``fakeredis``) or from module helpers, not from a
fixture, so they cannot be reused by import.

What was changed: nothing inside the test functions, ``TestStorage`` or their helpers, which
are copied verbatim below (one section per source file, in source order). The import blocks
were merged into one, and the things that build storages are replaced by the adapter section
(ours, not Optuna's): ``STORAGE_MODES_HEARTBEAT``, ``StorageSupplier`` (from
``optuna.testing.storages``), ``create_rdb_storage`` (test_cached_storage.py) and
``get_storage`` (test_with_server.py). Left out: test_storages.py's ``storage`` fixture (see
tests/system/test_optuna_storage_contract.py) and ``test_get_storage`` (it never touches a storage
we build). This module is not collected by itself: tests/system/test_optuna_storage_contract.py
imports the tests and provides the database. When upgrading Optuna, re-copy from its sdist.
"""

# The copied code keeps Optuna's style (its own ruff config differs from ours).
# ruff: noqa: I001, UP037, SIM117, SIM105, B007, B905

from __future__ import annotations

import copy
import itertools
import multiprocessing
import pickle
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from unittest.mock import Mock, patch

import numpy as np
import optuna
import pytest
from optuna import Study
from optuna.exceptions import ExperimentalWarning
from optuna.storages import (
    BaseStorage,
    GrpcStorageProxy,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
    _CachedStorage,
)
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.storages.journal import JournalRedisBackend
from optuna.study import StudyDirection
from optuna.testing.pytest_storages import (
    StorageTestCase,
    _test_set_and_get_study_system_attrs_for_floats,
    _test_set_and_get_study_user_attrs_for_floats,
    _test_set_and_get_trial_param_for_floats,
    _test_set_and_get_trial_system_attr_for_floats,
    _test_set_and_get_trial_user_attr_for_floats,
    _test_set_trial_intermediate_value_for_floats,
    _test_set_trial_state_values_for_floats,
)
from optuna.testing.tempfile_pool import NamedTemporaryFilePool
from optuna.testing.threading import _TestableThread
from optuna.trial import FrozenTrial, TrialState

from hpo.core.settings import Settings
from hpo.core.storage import HeartbeatStorage, make_storage

# =============================================================================================
# Adapter (ours, not Optuna's): every storage these tests build is our HeartbeatStorage,
# built by make_storage, on the database the contract module's fixture hands to use_database().
# =============================================================================================

# make_storage's settings when a test passes no storage arguments (as tests/conftest.py's).
HEARTBEAT_INTERVAL = 1
GRACE_PERIOD = 4

# Replaces optuna.testing.storages.STORAGE_MODES_HEARTBEAT (["sqlite", "cached_sqlite"]).
STORAGE_MODES_HEARTBEAT = ["heartbeat_pg", "cached_heartbeat_pg"]
_KNOWN_MODES = {*STORAGE_MODES_HEARTBEAT, "sqlite", "cached_sqlite"}

_database_url: str | None = None


def use_database(url: str | None) -> None:
    """The (empty) database that the storages built from now on use."""
    global _database_url
    _database_url = url


def make_heartbeat_storage(**storage_kwargs: Any) -> HeartbeatStorage:
    """``make_storage``'s storage; RDBStorage arguments a test passes override its own."""
    if _database_url is None:
        raise RuntimeError(
            "no database: run these via tests/system/test_optuna_storage_contract.py"
        )
    storage = make_storage(
        Settings(
            database_url=_database_url,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            grace_period=GRACE_PERIOD,
        )
    )
    if not storage_kwargs:
        return storage
    kwargs: dict[str, Any] = {
        "engine_kwargs": copy.deepcopy(storage.engine_kwargs),
        "heartbeat_interval": storage.heartbeat_interval,
        "grace_period": storage.grace_period,
        "heartbeat_stale_trial_callback": storage.heartbeat_stale_trial_callback,
    }
    storage.engine.dispose()
    return HeartbeatStorage(storage.url, **{**kwargs, **storage_kwargs})


class StorageSupplier(AbstractContextManager):  # type: ignore[type-arg]
    """Replaces ``optuna.testing.storages.StorageSupplier``.

    Every specifier gives our storage on the test's PostgreSQL database (Optuna's tests also
    ask for ``"sqlite"``); a ``cached`` one is wrapped in ``_CachedStorage``, which is what
    ``optuna.create_study``/``load_study`` do with an ``RDBStorage``.
    """

    def __init__(self, storage_specifier: str, **kwargs: Any) -> None:
        assert storage_specifier in _KNOWN_MODES, storage_specifier
        self.storage_specifier = storage_specifier
        self.extra_args = kwargs
        self.backend: HeartbeatStorage | None = None

    def __enter__(self) -> HeartbeatStorage | _CachedStorage:
        self.backend = make_heartbeat_storage(**self.extra_args)
        if "cached" in self.storage_specifier:
            return _CachedStorage(self.backend)
        return self.backend

    def __exit__(self, *exc_info: object) -> None:
        if self.backend is not None:
            self.backend.engine.dispose()


@contextmanager
def create_rdb_storage(url: str = "sqlite:///:memory:") -> Iterator[HeartbeatStorage]:
    """Replaces test_cached_storage.py's helper; ``url`` is ignored (the test database is used:
    test_unfinished_trial_ids' two storages on one file thus share one database)."""
    storage = make_heartbeat_storage()
    try:
        yield storage
    finally:
        storage.engine.dispose()


@contextmanager
def get_storage() -> Iterator[BaseStorage]:
    """Replaces test_with_server.py's helper (``RDBStorage(os.environ["TEST_DB_URL"])``)."""
    storage = make_heartbeat_storage()
    try:
        yield storage
    finally:
        storage.engine.dispose()


# =============================================================================================
# Verbatim from optuna 5.0.0 tests/storages_tests/test_storages.py
# =============================================================================================


class TestStorage(StorageTestCase):
    def test_create_new_study_unique_id(self, storage: BaseStorage) -> None:
        study_id = storage.create_new_study(directions=[StudyDirection.MINIMIZE])
        study_id2 = storage.create_new_study(directions=[StudyDirection.MINIMIZE])
        storage.delete_study(study_id2)
        study_id3 = storage.create_new_study(directions=[StudyDirection.MINIMIZE])

        # Study id must not be reused after deletion.
        if not isinstance(storage, (RDBStorage, _CachedStorage, GrpcStorageProxy)):
            # TODO(ytsmiling) Fix RDBStorage so that it does not reuse study_id.
            assert len({study_id, study_id2, study_id3}) == 3
        frozen_studies = storage.get_all_studies()
        assert {s._study_id for s in frozen_studies} == {study_id, study_id3}

    @pytest.mark.parametrize("param_names", [["a", "b"], ["b", "a"]])
    def test_get_all_trials_params_order(
        self, storage: BaseStorage, param_names: list[str]
    ) -> None:
        # We don't actually require that all storages to preserve the order of parameters,
        # but all current implementations except for GrpcStorageProxy do, so we test this property.
        if isinstance(storage, GrpcStorageProxy):
            pytest.skip("GrpcStorageProxy does not preserve the order of parameters.")

        super().test_get_all_trials_params_order(storage, param_names)

    def test_pickle_storage(self, storage: BaseStorage) -> None:
        if isinstance(storage, JournalStorage) and isinstance(
            storage._backend, JournalRedisBackend
        ):
            pytest.skip("The `fakeredis` does not support multi instances.")

        study_id = storage.create_new_study(directions=[StudyDirection.MINIMIZE])
        storage.set_study_system_attr(study_id, "key", "pickle")

        restored_storage = pickle.loads(pickle.dumps(storage))

        storage_system_attrs = storage.get_study_system_attrs(study_id)
        restored_storage_system_attrs = restored_storage.get_study_system_attrs(study_id)
        assert storage_system_attrs == restored_storage_system_attrs == {"key": "pickle"}

        if isinstance(storage, RDBStorage):
            assert storage.url == restored_storage.url
            assert storage.engine_kwargs == restored_storage.engine_kwargs
            assert storage.skip_compatibility_check == restored_storage.skip_compatibility_check
            assert storage.engine != restored_storage.engine
            assert storage.scoped_session != restored_storage.scoped_session
            assert storage._version_manager != restored_storage._version_manager


def test_get_trials_included_trial_ids() -> None:
    storage_mode = "sqlite"

    with StorageSupplier(storage_mode) as storage:
        assert isinstance(storage, RDBStorage)
        study_id = storage.create_new_study(directions=[StudyDirection.MINIMIZE])

        trial_id = storage.create_new_trial(study_id)
        trial_id_greater_than = trial_id + 500000

        trials = storage._get_trials(
            study_id,
            states=None,
            included_trial_ids=set(),
            trial_id_greater_than=trial_id_greater_than,
        )
        assert len(trials) == 0

        # A large exclusion list used to raise errors. Check that it is not an issue.
        # See https://github.com/optuna/optuna/issues/1457.
        trials = storage._get_trials(
            study_id,
            states=None,
            included_trial_ids=set(range(500000)),
            trial_id_greater_than=trial_id_greater_than,
        )
        assert len(trials) == 1


def test_get_trials_trial_id_greater_than() -> None:
    storage_mode = "sqlite"

    with StorageSupplier(storage_mode) as storage:
        assert isinstance(storage, RDBStorage)
        study_id = storage.create_new_study(directions=[StudyDirection.MINIMIZE])

        storage.create_new_trial(study_id)

        trials = storage._get_trials(
            study_id, states=None, included_trial_ids=set(), trial_id_greater_than=-1
        )
        assert len(trials) == 1

        trials = storage._get_trials(
            study_id, states=None, included_trial_ids=set(), trial_id_greater_than=500001
        )
        assert len(trials) == 0


# =============================================================================================
# Verbatim from optuna 5.0.0 tests/storages_tests/test_heartbeat.py
# =============================================================================================


@pytest.mark.parametrize("storage_mode", STORAGE_MODES_HEARTBEAT)
def test_repeatedly_called_record_heartbeat(storage_mode: str) -> None:
    heartbeat_interval = 1
    grace_period = 2

    with StorageSupplier(
        storage_mode, heartbeat_interval=heartbeat_interval, grace_period=grace_period
    ) as storage:
        assert is_heartbeat_enabled(storage)
        assert isinstance(storage, BaseHeartbeat)

        study1 = optuna.create_study(storage=storage)

        with pytest.warns(UserWarning):
            trial1 = study1.ask()
        storage.record_heartbeat(trial1._trial_id)
        storage.record_heartbeat(trial1._trial_id)


@pytest.mark.parametrize("storage_mode", STORAGE_MODES_HEARTBEAT)
def test_fail_stale_trials_with_optimize(storage_mode: str) -> None:
    heartbeat_interval = 1
    grace_period = 2

    with StorageSupplier(
        storage_mode, heartbeat_interval=heartbeat_interval, grace_period=grace_period
    ) as storage:
        assert is_heartbeat_enabled(storage)
        assert isinstance(storage, BaseHeartbeat)

        study1 = optuna.create_study(storage=storage)
        study2 = optuna.create_study(storage=storage)

        with pytest.warns(UserWarning):
            trial1 = study1.ask()
            trial2 = study2.ask()
        storage.record_heartbeat(trial1._trial_id)
        storage.record_heartbeat(trial2._trial_id)
        time.sleep(grace_period + 1)

        assert study1.trials[0].state is TrialState.RUNNING
        assert study2.trials[0].state is TrialState.RUNNING

        # Exceptions raised in spawned threads are caught by `_TestableThread`.
        with patch("optuna.storages._heartbeat.Thread", _TestableThread):
            study1.optimize(lambda _: 1.0, n_trials=1)

        assert study1.trials[0].state is TrialState.FAIL  # type: ignore [comparison-overlap]
        assert study2.trials[0].state is TrialState.RUNNING


@pytest.mark.parametrize("storage_mode", STORAGE_MODES_HEARTBEAT)
def test_invalid_heartbeat_interval_and_grace_period(storage_mode: str) -> None:
    with pytest.raises(ValueError):
        with StorageSupplier(storage_mode, heartbeat_interval=-1):
            pass

    with pytest.raises(ValueError):
        with StorageSupplier(storage_mode, grace_period=-1):
            pass


@pytest.mark.parametrize("storage_mode", STORAGE_MODES_HEARTBEAT)
def test_heartbeat_experimental_warnings(storage_mode: str) -> None:
    with pytest.warns(ExperimentalWarning, match="heartbeat_interval") as record:
        with StorageSupplier(storage_mode, heartbeat_interval=2) as storage:
            study = optuna.create_study(storage=storage)
            study.optimize(lambda _: 1.0, n_trials=1)

    # Check other ExperimentalWarning related to heartbeat are not raised.
    assert (
        len([warning for warning in record if isinstance(warning.message, ExperimentalWarning)])
        == 1
    )


@pytest.mark.parametrize("storage_mode", STORAGE_MODES_HEARTBEAT)
def test_heartbeat_stale_trial_callback(storage_mode: str) -> None:
    heartbeat_interval = 1
    grace_period = 2

    def _heartbeat_stale_trial_callback(study: Study, trial: FrozenTrial) -> None:
        assert study._storage.get_study_system_attrs(study._study_id)["test"] == "A"
        assert trial.system_attrs["test"] == "B"

    heartbeat_stale_trial_callback = Mock(wraps=_heartbeat_stale_trial_callback)

    with StorageSupplier(
        storage_mode,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=heartbeat_stale_trial_callback,
    ) as storage:
        assert is_heartbeat_enabled(storage)
        assert isinstance(storage, BaseHeartbeat)

        study = optuna.create_study(storage=storage)
        study._storage.set_study_system_attr(study._study_id, "test", "A")

        with pytest.warns(UserWarning):
            trial = study.ask()
        trial.storage.set_trial_system_attr(trial._trial_id, "test", "B")
        storage.record_heartbeat(trial._trial_id)
        time.sleep(grace_period + 1)

        # Exceptions raised in spawned threads are caught by `_TestableThread`.
        with patch("optuna.storages._heartbeat.Thread", _TestableThread):
            study.optimize(lambda _: 1.0, n_trials=1)
            heartbeat_stale_trial_callback.assert_called_once()


@pytest.mark.parametrize(
    "storage_mode,max_retry", itertools.product(STORAGE_MODES_HEARTBEAT, [None, 0, 1])
)
def test_retry_heartbeat_stale_trial_callback(storage_mode: str, max_retry: int | None) -> None:
    heartbeat_interval = 1
    grace_period = 2

    with StorageSupplier(
        storage_mode,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
    ) as storage:
        assert is_heartbeat_enabled(storage)
        assert isinstance(storage, BaseHeartbeat)

        study = optuna.create_study(storage=storage)

        with pytest.warns(UserWarning):
            trial = study.ask()
        trial.suggest_float("_", -1, -1)
        trial.report(0.5, 1)
        storage.record_heartbeat(trial._trial_id)
        time.sleep(grace_period + 1)

        # Exceptions raised in spawned threads are caught by `_TestableThread`.
        with patch("optuna.storages._heartbeat.Thread", _TestableThread):
            study.optimize(lambda _: 1.0, n_trials=1)

        # Test the last trial to see if it was a retry of the first trial or not.
        # Test max_retry=None to see if trial is retried.
        # Test max_retry=0 to see if no trials are retried.
        # Test max_retry=1 to see if trial is retried.
        assert RetryHeartbeatStaleTrialCallback.retried_trial_number(study.trials[1]) == (
            None if max_retry == 0 else 0
        )
        # Test inheritance of trial fields.
        if max_retry != 0:
            assert study.trials[0].params == study.trials[1].params
            assert study.trials[0].distributions == study.trials[1].distributions
            assert study.trials[0].user_attrs == study.trials[1].user_attrs
            # Only `intermediate_values` are not inherited.
            assert study.trials[1].intermediate_values == {}


@pytest.mark.parametrize(
    "storage_mode,max_retry", itertools.product(STORAGE_MODES_HEARTBEAT, [None, 0, 1])
)
def test_retry_heartbeat_stale_trial_callback_intermediate(
    storage_mode: str, max_retry: int | None
) -> None:
    heartbeat_interval = 1
    grace_period = 2

    with StorageSupplier(
        storage_mode,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
            max_retry=max_retry, inherit_intermediate_values=True
        ),
    ) as storage:
        assert is_heartbeat_enabled(storage)
        assert isinstance(storage, BaseHeartbeat)

        study = optuna.create_study(storage=storage)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            trial = study.ask()
        trial.suggest_float("_", -1, -1)
        trial.report(0.5, 1)
        storage.record_heartbeat(trial._trial_id)
        time.sleep(grace_period + 1)

        # Exceptions raised in spawned threads are caught by `_TestableThread`.
        with patch("optuna.storages._heartbeat.Thread", _TestableThread):
            study.optimize(lambda _: 1.0, n_trials=1)

        # Test the last trial to see if it was a retry of the first trial or not.
        # Test max_retry=None to see if trial is retried.
        # Test max_retry=0 to see if no trials are retried.
        # Test max_retry=1 to see if trial is retried.
        assert RetryHeartbeatStaleTrialCallback.retried_trial_number(study.trials[1]) == (
            None if max_retry == 0 else 0
        )
        # Test inheritance of trial fields.
        if max_retry != 0:
            assert study.trials[0].params == study.trials[1].params
            assert study.trials[0].distributions == study.trials[1].distributions
            assert study.trials[0].user_attrs == study.trials[1].user_attrs
            assert study.trials[0].intermediate_values == study.trials[1].intermediate_values


@pytest.mark.parametrize("grace_period", [None, 2])
def test_fail_stale_trials(grace_period: int | None) -> None:
    storage_mode = "sqlite"
    heartbeat_interval = 1
    _grace_period = (heartbeat_interval * 2) if grace_period is None else grace_period

    def heartbeat_stale_trial_callback(study: "optuna.Study", trial: FrozenTrial) -> None:
        assert study._storage.get_study_system_attrs(study._study_id)["test"] == "A"
        assert trial.system_attrs["test"] == "B"

    def check_change_trial_state_to_fail(study: "optuna.Study") -> None:
        assert study.trials[0].state is TrialState.RUNNING
        optuna.storages.fail_stale_trials(study)
        assert study.trials[0].state is TrialState.FAIL  # type: ignore [comparison-overlap]

    def check_keep_trial_state_in_running(study: "optuna.Study") -> None:
        assert study.trials[0].state is TrialState.RUNNING
        optuna.storages.fail_stale_trials(study)
        assert study.trials[0].state is TrialState.RUNNING

    with StorageSupplier(storage_mode) as storage:
        assert isinstance(storage, RDBStorage)
        storage.heartbeat_interval = heartbeat_interval
        storage.grace_period = grace_period
        storage.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback
        study = optuna.create_study(storage=storage)
        study._storage.set_study_system_attr(study._study_id, "test", "A")

        with pytest.warns(UserWarning):
            trial = study.ask()
        trial.storage.set_trial_system_attr(trial._trial_id, "test", "B")

        time.sleep(_grace_period + 1)
        check_keep_trial_state_in_running(study)

        storage.record_heartbeat(trial._trial_id)

        check_keep_trial_state_in_running(study)

        time.sleep(_grace_period + 1)
        check_change_trial_state_to_fail(study)


def run_fail_stale_trials(storage_url: str, sleep_time: int) -> None:
    heartbeat_interval = 1
    grace_period = 2

    storage = RDBStorage(storage_url)
    storage.heartbeat_interval = heartbeat_interval
    storage.grace_period = grace_period

    original_set_trial_state_values = storage.set_trial_state_values

    def _set_trial_state_values(*args: Any, **kwargs: Any) -> bool:
        # The second process fails to set state due to the race condition.
        time.sleep(sleep_time)
        return original_set_trial_state_values(*args, **kwargs)

    storage.set_trial_state_values = _set_trial_state_values  # type: ignore[method-assign]

    study = optuna.load_study(study_name=None, storage=storage)
    optuna.storages.fail_stale_trials(study)


def test_fail_stale_trials_with_race_condition() -> None:
    grace_period = 2
    storage_mode = "sqlite"

    with StorageSupplier(storage_mode) as storage:
        assert isinstance(storage, RDBStorage)

        study = optuna.create_study(storage=storage)

        trial = study.ask()
        storage.record_heartbeat(trial._trial_id)
        time.sleep(grace_period + 1)
        p1 = multiprocessing.Process(target=run_fail_stale_trials, args=(storage.url, 1))
        p1.start()
        p2 = multiprocessing.Process(target=run_fail_stale_trials, args=(storage.url, 2))
        p2.start()
        p1.join()
        p2.join()
        assert p1.exitcode == 0
        assert p2.exitcode == 0
        assert study.trials[0].state is TrialState.FAIL


def test_get_stale_trial_ids() -> None:
    storage_mode = "sqlite"
    heartbeat_interval = 1
    grace_period = 2

    with StorageSupplier(storage_mode) as storage:
        assert isinstance(storage, RDBStorage)
        storage.heartbeat_interval = heartbeat_interval
        storage.grace_period = grace_period
        study = optuna.create_study(storage=storage)

        with pytest.warns(UserWarning):
            trial = study.ask()
        storage.record_heartbeat(trial._trial_id)
        time.sleep(grace_period + 1)
        assert len(storage._get_stale_trial_ids(study._study_id)) == 1
        assert storage._get_stale_trial_ids(study._study_id)[0] == trial._trial_id


@pytest.mark.parametrize("storage_mode", STORAGE_MODES_HEARTBEAT)
def test_retry_heartbeat_stale_trial_callback_repetitive_failure(storage_mode: str) -> None:
    heartbeat_interval = 1
    grace_period = 2
    max_retry = 3
    n_trials = 5

    with StorageSupplier(
        storage_mode,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
    ) as storage:
        assert is_heartbeat_enabled(storage)
        assert isinstance(storage, BaseHeartbeat)

        study = optuna.create_study(storage=storage)

        # Make repeatedly failed and retried trials by heartbeat.
        for _ in range(n_trials):
            with pytest.warns(UserWarning):
                trial = study.ask()
            storage.record_heartbeat(trial._trial_id)
            time.sleep(grace_period + 1)
            optuna.storages.fail_stale_trials(study)

        trials = study.trials

        assert len(trials) == n_trials + 1

        assert "failed_trial" not in trials[0].system_attrs
        assert "retry_history" not in trials[0].system_attrs

        # The trials 1-3 are retried ones originating from the trial 0.
        assert trials[1].system_attrs["failed_trial"] == 0
        assert trials[1].system_attrs["retry_history"] == [0]

        assert trials[2].system_attrs["failed_trial"] == 0
        assert trials[2].system_attrs["retry_history"] == [0, 1]

        assert trials[3].system_attrs["failed_trial"] == 0
        assert trials[3].system_attrs["retry_history"] == [0, 1, 2]

        # Trials 4 and later are the newly started ones and
        # they are retried after exceeding max_retry.
        assert "failed_trial" not in trials[4].system_attrs
        assert "retry_history" not in trials[4].system_attrs
        assert trials[5].system_attrs["failed_trial"] == 4
        assert trials[5].system_attrs["retry_history"] == [4]


# =============================================================================================
# Verbatim from optuna 5.0.0 tests/storages_tests/test_callbacks.py
# =============================================================================================


def test_retry_history_with_success() -> None:
    # Trial that is not a retry should return empty list.
    with StorageSupplier("sqlite") as storage:
        study = optuna.create_study(storage=storage)
        trial = study.ask()
        study.tell(trial, 1.0)  # Complete the trial to get FrozenTrial.
        assert RetryHeartbeatStaleTrialCallback.retry_history(study.trials[0]) == []


def test_retry_history_with_failures() -> None:
    max_retry = 3
    callback = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    with StorageSupplier(
        "sqlite", heartbeat_interval=1, grace_period=2, heartbeat_stale_trial_callback=callback
    ) as storage:
        study = optuna.create_study(storage=storage)
        for n_retries in range(1, max_retry + 1):
            # Create a trial and manually set it as failed.
            trial = study.ask({"x": optuna.distributions.FloatDistribution(-1, 1)})
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            callback(study, study.trials[trial.number])  # Manually call callback.

            # Get all trials after another trial for retry is enqueued.
            trials = study.trials
            # Original failed trial + retried trials.
            assert len(trials) == n_retries + 1
            # The last trial before the retried trial must be failed.
            assert trials[trial.number].state == TrialState.FAIL
            # Retry should show the full history of the previous trials.
            assert RetryHeartbeatStaleTrialCallback.retry_history(
                trials[trial.number + 1]
            ) == list(range(n_retries))


def test_retry_history_with_more_than_max_retry() -> None:
    max_retry = 3
    callback = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    with StorageSupplier(
        "sqlite", heartbeat_interval=1, grace_period=2, heartbeat_stale_trial_callback=callback
    ) as storage:
        study = optuna.create_study(storage=storage)
        for n_retries in range(max_retry + 2):
            trial = study.ask({"x": optuna.distributions.FloatDistribution(-1, 1)})
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            callback(study, study.trials[trial.number])  # Manually call callback.

        # After max_retry retries, the parameter should be different from the original.
        assert study.trials[0].params["x"] != study.trials[-1].params["x"]


# =============================================================================================
# Verbatim from optuna 5.0.0 tests/storages_tests/test_cached_storage.py
# =============================================================================================


def test_create_trial() -> None:
    with create_rdb_storage() as base_storage:
        storage = _CachedStorage(base_storage)
        study_id = storage.create_new_study(
            directions=[StudyDirection.MINIMIZE], study_name="test-study"
        )
        frozen_trial = optuna.trial.FrozenTrial(
            number=1,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=None,
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=1,
        )
        with patch.object(base_storage, "_create_new_trial", return_value=frozen_trial):
            storage.create_new_trial(study_id)
        storage.create_new_trial(study_id)


def test_set_trial_state_values() -> None:
    with create_rdb_storage() as base_storage:
        storage = _CachedStorage(base_storage)
        study_id = storage.create_new_study(
            directions=[StudyDirection.MINIMIZE], study_name="test-study"
        )
        trial_id = storage.create_new_trial(study_id)
        storage.set_trial_state_values(trial_id, state=TrialState.COMPLETE)

        cached_trial = storage.get_trial(trial_id)
        base_trial = base_storage.get_trial(trial_id)

        assert cached_trial == base_trial


def test_uncached_set() -> None:
    """Test CachedStorage does flush to persistent storages.

    The CachedStorage flushes any modification of trials to a persistent storage immediately.

    """

    with create_rdb_storage() as base_storage:
        storage = _CachedStorage(base_storage)
        study_id = storage.create_new_study(
            directions=[StudyDirection.MINIMIZE], study_name="test-study"
        )

        trial_id = storage.create_new_trial(study_id)
        trial = storage.get_trial(trial_id)
        with patch.object(base_storage, "set_trial_state_values", return_value=True) as set_mock:
            storage.set_trial_state_values(trial_id, state=trial.state, values=(0.3,))
            assert set_mock.call_count == 1

        trial_id = storage.create_new_trial(study_id)
        with patch.object(base_storage, "_set_trial_param", return_value=True) as set_mock:
            storage.set_trial_param(
                trial_id, "paramA", 1.2, optuna.distributions.FloatDistribution(-0.2, 2.3)
            )
            assert set_mock.call_count == 1

        for state in [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.WAITING]:
            trial_id = storage.create_new_trial(study_id)
            with patch.object(
                base_storage, "set_trial_state_values", return_value=True
            ) as set_mock:
                storage.set_trial_state_values(trial_id, state=state)
                assert set_mock.call_count == 1

        trial_id = storage.create_new_trial(study_id)
        with patch.object(
            base_storage, "set_trial_intermediate_value", return_value=None
        ) as set_mock:
            storage.set_trial_intermediate_value(trial_id, 3, 0.3)
            assert set_mock.call_count == 1

        trial_id = storage.create_new_trial(study_id)
        with patch.object(base_storage, "set_trial_system_attr", return_value=None) as set_mock:
            storage.set_trial_system_attr(trial_id, "attrA", "foo")
            assert set_mock.call_count == 1

        trial_id = storage.create_new_trial(study_id)
        with patch.object(base_storage, "set_trial_user_attr", return_value=None) as set_mock:
            storage.set_trial_user_attr(trial_id, "attrB", "bar")
            assert set_mock.call_count == 1


def test_read_trials_from_remote_storage() -> None:
    with create_rdb_storage() as base_storage:
        storage = _CachedStorage(base_storage)
        study_id = storage.create_new_study(
            directions=[StudyDirection.MINIMIZE], study_name="test-study"
        )

        storage._read_trials_from_remote_storage(study_id)

        # Non-existent study.
        with pytest.raises(KeyError):
            storage._read_trials_from_remote_storage(study_id + 1)

        # Create a trial via CachedStorage and update it via backend storage directly.
        trial_id = storage.create_new_trial(study_id)
        base_storage.set_trial_param(
            trial_id, "paramA", 1.2, optuna.distributions.FloatDistribution(-0.2, 2.3)
        )
        base_storage.set_trial_state_values(trial_id, TrialState.COMPLETE, values=[0.0])
        storage._read_trials_from_remote_storage(study_id)
        assert storage.get_trial(trial_id).state == TrialState.COMPLETE


def test_delete_study() -> None:
    with create_rdb_storage() as base_storage:
        storage = _CachedStorage(base_storage)

        study_id1 = storage.create_new_study(directions=[StudyDirection.MINIMIZE])
        trial_id1 = storage.create_new_trial(study_id1)
        storage.set_trial_state_values(trial_id1, state=TrialState.COMPLETE)

        study_id2 = storage.create_new_study(directions=[StudyDirection.MINIMIZE])
        trial_id2 = storage.create_new_trial(study_id2)
        storage.set_trial_state_values(trial_id2, state=TrialState.COMPLETE)

        # Update _StudyInfo.finished_trial_ids
        storage._read_trials_from_remote_storage(study_id1)
        storage._read_trials_from_remote_storage(study_id2)

        storage.delete_study(study_id1)
        assert storage._get_cached_trial(trial_id1) is None
        assert storage._get_cached_trial(trial_id2) is not None


def test_unfinished_trial_ids() -> None:
    # This test reproduces the bug fixed in https://github.com/optuna/optuna/pull/6310
    with NamedTemporaryFilePool() as tempfile:
        storage_url = f"sqlite:///{tempfile.name}"
        study_name = "test-unfinished-trial-ids"

        with (
            create_rdb_storage(storage_url) as base_storage1,
            create_rdb_storage(storage_url) as base_storage2,
        ):
            storage1 = _CachedStorage(base_storage1)
            study1 = optuna.create_study(
                study_name=study_name,
                storage=storage1,
                load_if_exists=True,
            )
            storage2 = _CachedStorage(base_storage2)
            study2 = optuna.create_study(
                study_name=study_name,
                storage=storage2,
                load_if_exists=True,
            )

            study1.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING))
            study2.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.0))
            assert len(study1.trials) == 2
            assert len(study2.trials) == 2


# =============================================================================================
# Verbatim from optuna 5.0.0 tests/storages_tests/test_with_server.py
# =============================================================================================


_STUDY_NAME = "_test_multiprocess"


def f(x: float, y: float) -> float:
    return (x - 3) ** 2 + y


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    y = trial.suggest_float("y", -10, 10)
    trial.report(x, 0)
    trial.report(y, 1)
    trial.set_user_attr("x", x)
    return f(x, y)


def run_optimize(study_name: str, n_trials: int) -> None:
    with get_storage() as storage:
        # Create a study
        study = optuna.load_study(study_name=study_name, storage=storage)
        # Run optimization
        study.optimize(objective, n_trials=n_trials)


def _check_trials(trials: Sequence[optuna.trial.FrozenTrial]) -> None:
    # Check trial states.
    assert all(trial.state == TrialState.COMPLETE for trial in trials)

    # Check trial values and params.
    assert all("x" in trial.params for trial in trials)
    assert all("y" in trial.params for trial in trials)
    assert all(
        [
            condition
            for condition in np.isclose(
                np.asarray([trial.value for trial in trials]),
                [f(trial.params["x"], trial.params["y"]) for trial in trials],
                atol=1e-4,
            )
        ]
    )

    # Check intermediate values.
    assert all(len(trial.intermediate_values) == 2 for trial in trials)
    assert all(trial.params["x"] == trial.intermediate_values[0] for trial in trials)
    assert all(trial.params["y"] == trial.intermediate_values[1] for trial in trials)

    # Check attrs.
    assert all(
        [
            condition
            for condition in np.isclose(
                [trial.user_attrs["x"] for trial in trials],
                [trial.params["x"] for trial in trials],
                atol=1e-4,
            )
        ]
    )


def test_loaded_trials() -> None:
    # Please create the tables by placing this function before the multi-process tests.

    with get_storage() as storage:
        try:
            optuna.delete_study(study_name=_STUDY_NAME, storage=storage)
        except KeyError:
            pass

        N_TRIALS = 20
        study = optuna.create_study(study_name=_STUDY_NAME, storage=storage)
        # Run optimization
        study.optimize(objective, n_trials=N_TRIALS)

        trials = study.trials
        assert len(trials) == N_TRIALS

        _check_trials(trials)

        # Create a new study to confirm the study can load trial properly.
        loaded_study = optuna.load_study(study_name=_STUDY_NAME, storage=storage)
        _check_trials(loaded_study.trials)


@pytest.mark.parametrize(
    "input_value,expected",
    [
        (float("inf"), float("inf")),
        (-float("inf"), -float("inf")),
    ],
)
def test_store_infinite_values(input_value: float, expected: float) -> None:
    with get_storage() as storage:
        study_id = storage.create_new_study(directions=[StudyDirection.MINIMIZE])
        trial_id = storage.create_new_trial(study_id)
        storage.set_trial_intermediate_value(trial_id, 1, input_value)
        storage.set_trial_state_values(trial_id, state=TrialState.COMPLETE, values=(input_value,))
        assert storage.get_trial(trial_id).value == expected
        assert storage.get_trial(trial_id).intermediate_values[1] == expected


def test_store_nan_intermediate_values() -> None:
    with get_storage() as storage:
        study_id = storage.create_new_study(directions=[StudyDirection.MINIMIZE])
        trial_id = storage.create_new_trial(study_id)

        value = float("nan")
        storage.set_trial_intermediate_value(trial_id, 1, value)

        got_value = storage.get_trial(trial_id).intermediate_values[1]
        assert np.isnan(got_value)


def test_multithread_create_study() -> None:
    with get_storage() as storage:
        with ThreadPoolExecutor(10) as pool:
            for _ in range(10):
                pool.submit(
                    optuna.create_study,
                    storage=storage,
                    study_name="test-multithread-create-study",
                    load_if_exists=True,
                )


def test_multiprocess_run_optimize() -> None:
    n_workers = 8
    n_trials = 20
    with get_storage() as storage:
        try:
            optuna.delete_study(study_name=_STUDY_NAME, storage=storage)
        except KeyError:
            pass
        optuna.create_study(storage=storage, study_name=_STUDY_NAME)
        with ProcessPoolExecutor(n_workers) as pool:
            pool.map(run_optimize, *zip(*[[_STUDY_NAME, n_trials]] * n_workers))

        study = optuna.load_study(study_name=_STUDY_NAME, storage=storage)

        trials = study.trials
        assert len(trials) == n_workers * n_trials

        _check_trials(trials)


def test_pickle_storage() -> None:
    with get_storage() as storage:
        study_id = storage.create_new_study(directions=[StudyDirection.MINIMIZE])
        storage.set_study_system_attr(study_id, "key", "pickle")

        restored_storage = pickle.loads(pickle.dumps(storage))

        storage_system_attrs = storage.get_study_system_attrs(study_id)
        restored_storage_system_attrs = restored_storage.get_study_system_attrs(study_id)
        assert storage_system_attrs == restored_storage_system_attrs == {"key": "pickle"}


@pytest.mark.parametrize("direction", [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE])
@pytest.mark.parametrize(
    "values",
    [
        [0.0, 1.0, 2.0],
        [0.0, float("inf"), 1.0],
        [0.0, float("-inf"), 1.0],
        [float("inf"), 0.0, 1.0, float("-inf")],
        [float("inf")],
        [float("-inf")],
    ],
)
def test_get_best_trial(direction: StudyDirection, values: Sequence[float]) -> None:
    with get_storage() as storage:
        study = optuna.create_study(direction=direction, storage=storage)
        study.add_trials(
            [optuna.create_trial(params={}, distributions={}, value=value) for value in values]
        )
        expected_value = max(values) if direction == StudyDirection.MAXIMIZE else min(values)
        assert study.best_value == expected_value


def test_set_and_get_study_user_attrs_for_floats() -> None:
    with get_storage() as storage:
        _test_set_and_get_study_user_attrs_for_floats(storage)


def test_set_and_get_study_system_attrs_for_floats() -> None:
    with get_storage() as storage:
        _test_set_and_get_study_system_attrs_for_floats(storage)


def test_set_trial_state_values_for_floats() -> None:
    with get_storage() as storage:
        _test_set_trial_state_values_for_floats(storage)


def test_set_and_get_trial_param_for_floats() -> None:
    with get_storage() as storage:
        _test_set_and_get_trial_param_for_floats(storage)


def test_set_trial_intermediate_value_for_floats() -> None:
    with get_storage() as storage:
        _test_set_trial_intermediate_value_for_floats(storage)


def test_set_and_get_trial_user_attr_for_floats() -> None:
    with get_storage() as storage:
        _test_set_and_get_trial_user_attr_for_floats(storage)


def test_set_and_get_trial_system_attr_for_floats() -> None:
    with get_storage() as storage:
        _test_set_and_get_trial_system_attr_for_floats(storage)
