"""Population-based training over LoRA adapters: pure decisions for the worker.

A population of ``population_size`` members trains in segments of ``interval_steps`` (the
segments of ``hpo.core.schedulers.base``: each an Optuna trial, paused with its adapter and
optimizer state saved). When a member's segment ends, the worker asks ``pbt_next``:

- a member in the bottom ``quantile`` *exploits*: it loads the state of a member in the top
  ``quantile`` and takes its hyperparameters, then *explores*: each
  mutable one (learning rate, weight decay, LoRA dropout) is multiplied by a perturbation
  factor, or with ``resample_probability`` drawn anew from the space. Shape-defining ones
  (LoRA rank, target modules, batch size) are never explored, so a copied state always fits
  them: they come with the state they belong to.
- any other member continues its own state.

Members are ranked at the deciding member's step, by the scores of the checkpoints each saved
there, and a copy loads the donor's checkpoint from that step: a member behind is never
judged against the scores of members further along a decreasing loss curve, and a copy never
skips training it did not pay for (every member trains the whole schedule). A member
decided while others have not reached its step yet is ranked among those that have.

Each segment carries its member (``records.slot``) and, after an exploit, its lineage: the
trial whose state it copied, at which step, and each perturbation. Decisions draw from a
random stream seeded by (study seed, member, step), so they replay exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from hpo.core import records
from hpo.core.records import SegmentStatus
from hpo.core.schedulers.base import Continuation, Decision, Idle, Start
from hpo.core.spec import (
    PBT_MUTABLE,
    CategoricalDistribution,
    Distribution,
    FloatDistribution,
    PBTSchedulerSpec,
    SearchSpace,
    SearchSpec,
)


@dataclass(frozen=True)
class Checkpoint:
    """A member's saved state: the segment that paused at ``step`` with ``score``."""

    step: int
    trial: int
    params: dict[str, Any]
    score: float


@dataclass(frozen=True)
class Member:
    """A member of the population at its latest checkpoint.

    Attributes:
        slot: Which member (0 .. population_size - 1).
        trial: The segment that saved its latest checkpoint (what a continuation or a copy
            loads), or its first segment while it has none.
        params: The hyperparameters of that segment.
        step: Steps trained at that checkpoint.
        score: The value reported there (None without a checkpoint).
        state: Of its latest segment: ``paused`` (waiting for a decision), ``running``,
            ``complete`` or ``stopped``.
        checkpoints: Every state it saved by pausing, by step: what others rank and copy.
    """

    slot: int
    trial: int
    params: dict[str, Any]
    step: int
    score: float | None
    state: SegmentStatus
    checkpoints: tuple[Checkpoint, ...] = ()

    def at(self, step: int) -> Checkpoint | None:
        return next((c for c in reversed(self.checkpoints) if c.step == step), None)


@dataclass(frozen=True)
class Perturbation:
    name: str
    old: Any
    new: Any
    how: str  # "x0.8", "x1.2", "resampled", or "neighbour" for an ordered categorical


@dataclass(frozen=True)
class Lineage:
    """Where an exploited member's state came from (``records.lineage``)."""

    parent: int
    step: int
    perturbations: tuple[Perturbation, ...]

    def to_attr(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ContinueMember:
    """Continue member ``slot`` from ``trial``'s state with ``params`` up to ``until``;
    ``lineage`` is set when the state and params were copied from another member."""

    slot: int
    trial: int
    params: dict[str, Any]
    until: int
    lineage: Lineage | None = None

    def continuation(self, trials: Sequence[FrozenTrial]) -> Continuation:
        lineage = None if self.lineage is None else self.lineage.to_attr()
        attrs = records.segment_attrs(
            continues=self.trial, until=self.until, slot=self.slot, lineage=lineage
        )
        return Continuation(dict(self.params), attrs)


PBTDecision = Start | ContinueMember | Idle


class PBTScheduler:
    """The population's scheduler: members are configurations, and they change params."""

    pauses = True
    cools_down = False
    enqueue_refusal = (
        "runs PBT: its population is sampled, and its members change their own hyperparameters"
    )
    replay_refusal = "PBT changes hyperparameters mid-run; recorded curves cannot replay it."

    def __init__(
        self, spec: PBTSchedulerSpec, space: SearchSpace, *, minimize: bool = True
    ) -> None:
        self.spec = spec
        self.space = space
        self.minimize = minimize

    def started(self, trials: Sequence[FrozenTrial]) -> int:
        return len(members(trials))

    def decide(
        self,
        trials: Sequence[FrozenTrial],
        *,
        can_start: bool,
        seed: int,
        left: float | None = None,
    ) -> Decision:
        decision = pbt_next(
            members(trials), self.spec, self.space, seed=seed, minimize=self.minimize
        )
        if isinstance(decision, Start) and not can_start:
            busy = (TrialState.RUNNING, TrialState.WAITING)
            return Idle(done=not any(t.state in busy for t in trials))
        return decision

    def first_attrs(
        self, trials: Sequence[FrozenTrial], decision: Start | None = None
    ) -> dict[str, Any]:
        """A new member pauses after its first interval, in the first free slot."""
        return records.segment_attrs(until=self.spec.interval_steps, slot=len(members(trials)))

    def done_reason(self, max_trials: int) -> str:
        return f"PBT population of {self.spec.population_size} trained to the end"


def build(search: SearchSpec) -> PBTScheduler:
    assert isinstance(search.scheduler, PBTSchedulerSpec)
    return PBTScheduler(
        search.scheduler, search.space, minimize=search.objective.direction == "minimize"
    )


def members(trials: Iterable[FrozenTrial]) -> list[Member]:
    """Each member at its latest checkpoint (a paused or complete segment), by slot."""
    by_slot: dict[int, list[FrozenTrial]] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        slot = records.slot(trial)
        if slot is not None:
            by_slot.setdefault(slot, []).append(trial)
    out = []
    for slot, segments in sorted(by_slot.items()):
        saved = [s for s in segments if records.segment_status(s) in ("paused", "complete")]
        base = saved[-1] if saved else segments[0]
        steps = sorted(base.intermediate_values.items()) if saved else []
        out.append(
            Member(
                slot=slot,
                trial=base.number,
                params=dict(base.params),
                step=steps[-1][0] if steps else 0,
                score=steps[-1][1] if steps else None,
                state=records.segment_status(segments[-1]),
                checkpoints=tuple(c for s in saved if (c := _checkpoint(s)) is not None),
            )
        )
    return out


def _checkpoint(segment: FrozenTrial) -> Checkpoint | None:
    """The state a segment saved by pausing; None if it did not pause."""
    rung = records.paused_at(segment)
    if rung is None or records.segment_status(segment) != "paused":
        return None
    return Checkpoint(
        rung, segment.number, dict(segment.params), segment.intermediate_values[rung]
    )


def pbt_next(
    population: Sequence[Member],
    spec: PBTSchedulerSpec,
    space: SearchSpace,
    *,
    seed: int,
    minimize: bool = True,
) -> PBTDecision:
    """What a worker asking for work does: fill the population, else decide for the paused
    member that trained least (keeping members in step), else wait.

    A new member starts with ``Start(until=interval_steps)`` in the first free slot
    (``len(population)``); a continuation records ``trial`` as the segment it continues.
    """
    if len(population) < spec.population_size:
        return Start(until=spec.interval_steps)
    paused = [m for m in population if m.state == "paused"]
    if not paused:
        return Idle(done=not any(m.state == "running" for m in population))
    member = min(paused, key=lambda m: (m.step, m.slot))
    rng = random.Random(f"{seed}:{member.slot}:{member.step}")
    donor = exploit(population, member, quantile=spec.quantile, rng=rng, minimize=minimize)
    if donor is None:
        return ContinueMember(
            member.slot, member.trial, member.params, member.step + spec.interval_steps
        )
    params, perturbations = explore(donor.params, space, spec, rng=rng)
    return ContinueMember(
        member.slot,
        donor.trial,
        params,
        member.step + spec.interval_steps,
        Lineage(parent=donor.trial, step=donor.step, perturbations=perturbations),
    )


def exploit(
    population: Sequence[Member],
    member: Member,
    *,
    quantile: float,
    rng: random.Random,
    minimize: bool = True,
) -> Checkpoint | None:
    """The checkpoint at ``member``'s step of a top-``quantile`` member, which ``member``
    should copy, or None when ``member`` is not in the bottom ``quantile``. Members are
    ranked by the checkpoints they saved at that step (finished ones included: they
    passed it on the way)."""
    sign = 1.0 if minimize else -1.0
    ranked = sorted(
        ((m.slot, c) for m in population if (c := m.at(member.step)) is not None),
        key=lambda sc: (sign * sc[1].score, sc[0]),
    )
    cut = max(1, math.floor(len(ranked) * quantile))
    if len(ranked) < 2 or member.slot not in {slot for slot, _ in ranked[-cut:]}:
        return None
    return rng.choice([c for slot, c in ranked[:cut] if slot != member.slot])


def explore(
    params: dict[str, Any],
    space: SearchSpace,
    spec: PBTSchedulerSpec,
    *,
    rng: random.Random,
) -> tuple[dict[str, Any], tuple[Perturbation, ...]]:
    """Perturb the mutable hyperparameters the space searches; the others stay as they are."""
    new = dict(params)
    changes = []
    dists = space.distributions()
    for name in spec.mutable or PBT_MUTABLE:
        if name not in dists or name not in params:
            continue
        if rng.random() < spec.resample_probability:
            value, how = _resample(dists[name], rng), "resampled"
        else:
            factor = rng.choice(spec.perturbation_factors)
            value, how = _scale(dists[name], params[name], factor), f"x{factor:g}"
        new[name] = value
        changes.append(Perturbation(name, params[name], value, how))
    return new, tuple(changes)


def _scale(dist: Distribution, value: Any, factor: float) -> Any:
    """``value * factor`` kept inside ``dist``; an ordered categorical moves one choice."""
    if isinstance(dist, CategoricalDistribution):
        choices = sorted(dist.choices)
        i = choices.index(value) + (1 if factor > 1 else -1)
        return choices[min(len(choices) - 1, max(0, i))]
    scaled = min(dist.high, max(dist.low, value * factor))
    step = dist.step
    if step is None:
        return scaled
    return dist.low + round((scaled - dist.low) / step) * step


def _resample(dist: Distribution, rng: random.Random) -> Any:
    values = dist.values()
    if values is not None:
        return rng.choice(values)
    assert isinstance(dist, FloatDistribution)
    if dist.log:
        return math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
    return rng.uniform(dist.low, dist.high)
