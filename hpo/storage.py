"""Optuna's RDB storage on the same database as the service's tables."""

from __future__ import annotations

import copy
import warnings

from optuna import Study
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from hpo.settings import Settings

RETRIED_FROM_ATTR = "retried_from"


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's bounded retry of a dead worker's trial, plus a ``retried_from`` user attr."""

    def __call__(self, study: Study, trial: FrozenTrial) -> None:
        trial = copy.copy(trial)
        trial.user_attrs = {**trial.user_attrs, RETRIED_FROM_ATTR: trial.number}
        super().__call__(study, trial)


def make_storage(settings: Settings) -> RDBStorage:
    """Optuna storage with heartbeats and bounded retries of trials whose worker died.

    Heartbeats only run inside ``Study.optimize``; a trial silent for ``grace_period``
    seconds is failed and a copy of it is queued again, at most ``max_retries`` times.
    """
    engine_kwargs: dict[str, object] = {"pool_pre_ping": True}
    if settings.database_url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 30}
    else:
        engine_kwargs["connect_args"] = {"connect_timeout": 5}
    with warnings.catch_warnings():
        # Heartbeats and the retry callback are marked experimental; we rely on them on purpose.
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RDBStorage(
            settings.database_url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
            heartbeat_stale_trial_callback=RetryStaleTrial(max_retry=settings.max_retries),
        )
