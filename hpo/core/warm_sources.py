"""Which earlier studies seed a warm-started one: the ones it names, then, with ``auto``, the
owner's newest earlier studies of the same task.

Pure: it sees the new study's spec and candidates (name, row id, task, whether they have a
completed trial), never a database. ``hpo.core.studies`` reads the candidates: only the
owner's ``AUTO_CANDIDATES`` newest studies, through the ``(owner, id)`` index, so an owner
with a thousand studies costs the same bounded read as one with ten.

Same task (``task_key``): the same mode, base model (``train.model.name_or_path`` and its
task), decode adapter, dataset (``train.dataset.path``, a file or a builtin), declared data
shape and objective metric. Each of these changes what a trial's value means, so a study that
differs in one ranks configurations for another problem; a different search space or
budget does not (``hpo.core.warm_start`` maps configurations into the new space).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpo.core.spec import StudySpec
from hpo.core.spec.search import MAX_WARM_START_AUTO

# The owner's newest studies ``auto`` looks at: a bound on the read, well past the few it keeps.
AUTO_CANDIDATES = 100


@dataclass(frozen=True)
class TaskKey:
    """What two studies must share for one's results to seed the other."""

    mode: str
    model: str
    model_task: str
    adapter: str | None
    dataset: str
    shape: str
    metric: str


def task_key(spec: StudySpec) -> TaskKey:
    """The task ``spec`` trains for and scores, as ``auto`` compares it."""
    train = spec.train
    return TaskKey(
        mode=train.mode,
        model=train.model.name_or_path,
        model_task=train.model.task,
        adapter=train.adapter.study if train.adapter else None,
        dataset=train.dataset.path,
        shape=train.dataset.shape,
        metric=spec.search.objective.metric,
    )


@dataclass(frozen=True)
class Candidate:
    """An earlier study of the owner: its name, row id (a larger one is newer), task (None
    when its stored spec no longer reads as one) and whether it has a completed trial."""

    name: str
    id: int
    task: TaskKey | None
    completed: bool


def warm_sources(
    spec: StudySpec, candidates: Sequence[Candidate], *, limit: int = MAX_WARM_START_AUTO
) -> list[str]:
    """The studies that seed ``spec``, in the order they count (nearest first): the named ones
    as listed, then with ``auto`` up to ``limit`` candidates of the same task with a
    completed trial, newest first, none twice and never the new study itself. Empty when
    warm start is off, or ``auto`` alone found nothing (the study starts cold).

    ``candidates`` must be the owner's own studies: nothing here checks who owns them.
    """
    warm = spec.search.warm_start
    if warm is None:
        return []
    chosen = list(warm.studies)
    if warm.auto:
        key = task_key(spec)
        taken = {*chosen, spec.name}
        matching = [
            c.name
            for c in sorted(candidates, key=lambda c: -c.id)
            if c.completed and c.task == key and c.name not in taken
        ]
        chosen += matching[:limit]
    return chosen
