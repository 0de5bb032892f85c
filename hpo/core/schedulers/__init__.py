"""Schedulers: pause configurations at some steps and continue the best from where they
stopped (``base``: the interface; one module per scheduler: ``none``, ``asha``, ``top_k``,
``adaptive``, ``forecast``, ``pbt``; ``builder``: the one a spec names; ``dispatch``: what a
worker, the budget and the API ask of the study's scheduler).

Adding a scheduler: its spec option in ``hpo.core.spec`` (``SchedulerSpec``), a module here
with a class that satisfies ``base.Scheduler`` and a ``build(search)``, and its entry in
``builder.SCHEDULERS``.
"""

from __future__ import annotations

from hpo.core.schedulers.base import Continuation, Decision, Idle, Resumption, Scheduler, Start
from hpo.core.schedulers.builder import build_scheduler

__all__ = [
    "Continuation",
    "Decision",
    "Idle",
    "Resumption",
    "Scheduler",
    "Start",
    "build_scheduler",
]
