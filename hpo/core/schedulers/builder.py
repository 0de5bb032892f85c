"""The scheduler a study's spec names: one entry per scheduler module."""

from __future__ import annotations

from collections.abc import Callable

from hpo.core.schedulers import adaptive, asha, forecast, none, pbt, top_k
from hpo.core.schedulers.base import Scheduler
from hpo.core.spec import SearchSpec

# ``search.scheduler.type`` -> its module's ``build``.
SCHEDULERS: dict[str, Callable[[SearchSpec], Scheduler]] = {
    "none": none.build,
    "asha": asha.build,
    "top_k": top_k.build,
    "adaptive": adaptive.build,
    "forecast": forecast.build,
    "pbt": pbt.build,
}


def build_scheduler(search: SearchSpec) -> Scheduler:
    """The scheduler of ``search``, for its direction (and, for PBT, its space)."""
    return SCHEDULERS[search.scheduler.type](search)
