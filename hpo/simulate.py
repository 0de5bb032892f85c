"""Simulate a study on recorded learning curves: W asynchronous workers, a simulated clock.

Each simulated worker asks trials through the same sampler/pruner factory the real worker
uses, replays the configuration's recorded validation curve point by point (each point costs
its recorded or modelled device-seconds), reports each point, stops when pruned, pauses where
the scheduler says and tells the final value. Deterministic for a given seed.
"""

from __future__ import annotations

import heapq
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from hpo.core.errors import SpecError
from hpo.core.factory import load_study, suggest_params
from hpo.core.progress import beats
from hpo.core.scheduling import (
    CONTINUES_ATTR,
    PAUSED_AT_ATTR,
    UNTIL_ATTR,
    Continue,
    Start,
    configurations,
    next_work,
)
from hpo.core.spec import (
    NoSchedulerSpec,
    PBTSchedulerSpec,
    SearchSpace,
    SearchSpec,
    cools_down,
)

CurvePoint = tuple[float, float]  # (cost in device-seconds, objective value after it)
STUDY = "simulated"


class NotRecorded(KeyError):
    """The objective has no curve for these params: the trial fails at no cost."""


# A sampler that ignores failed trials and converges (GP) can propose the same unrecorded
# configuration forever; a worker that got this many in a row stops.
MAX_UNRECORDED_IN_A_ROW = 100


class CurveObjective(Protocol):
    """Anything with a search space and a recorded curve per configuration.

    ``curve(params)`` returns the points a trial with ``params`` would report, in order, or
    raises ``NotRecorded``; ``search_space`` is the space (spec distributions) the curves are
    defined on.
    """

    @property
    def search_space(self) -> SearchSpace: ...

    def curve(self, params: dict[str, Any]) -> list[CurvePoint]: ...


@dataclass
class Segment:
    """One stretch of a configuration's training: one Optuna trial, one worker.

    It trained the curve's points ``first_step`` .. ``last_step`` (1-based steps), paying only
    for those: a continued configuration never trains a point twice.
    """

    trial: int
    worker: int
    first_step: int
    last_step: int
    cost: float
    start: float
    end: float


@dataclass
class SimTrial:
    """One configuration: ``complete``, ``pruned``, or ``paused`` when the run ended."""

    number: int  # its first segment's trial number
    worker: int  # the worker of its first segment
    params: dict[str, Any]
    state: str
    value: float | None
    cost: float  # device-seconds over all its segments
    start: float
    end: float
    segments: list[Segment] = field(default_factory=list)


@dataclass
class Simulation:
    """The outcome: configurations in the order they ended, and best-so-far against cost."""

    trials: list[SimTrial] = field(default_factory=list)
    total_cost: float = 0.0
    # (cumulative device-seconds, best value) each time the best improved
    best_curve: list[tuple[float, float]] = field(default_factory=list)
    # workers that stopped early: their sampler kept proposing unrecorded configurations
    stalled_workers: int = 0

    def cost_to_reach(self, target: float, *, minimize: bool = True) -> float:
        """Device-seconds spent when a trial first finished at or better than ``target``."""
        for cost, best in self.best_curve:
            if not beats(target, best, minimize=minimize):
                return cost
        return math.inf

    def best_at(self, budget: float) -> float | None:
        """The best value known once ``budget`` device-seconds were spent."""
        known = [best for cost, best in self.best_curve if cost <= budget]
        return known[-1] if known else None


@dataclass(order=True)
class _Event:
    time: float
    worker: int
    trial: Any = field(compare=False, default=None)
    point: int = field(compare=False, default=0)  # index into the curve; its step is point + 1
    until: int | None = field(compare=False, default=None)
    config: int = field(compare=False, default=0)


def simulate(
    search: SearchSpec,
    objective: CurveObjective,
    *,
    workers: int,
    seed: int,
    max_cost: float | None = None,
    target: float | None = None,
    first: Sequence[dict[str, Any]] = (),
    sampler: Callable[[optuna.samplers.BaseSampler, int], optuna.samplers.BaseSampler]
    | None = None,
) -> Simulation:
    """Run ``search``'s sampler, pruner and scheduler against ``objective`` with ``workers``
    workers.

    A configuration's value is its curve's last point, as a worker reports its final
    evaluation. With a scheduler, a worker asking for work does what
    ``hpo.core.scheduling.next_work`` says over the study's trials, exactly as a real worker
    would under the study's lock: a paused configuration continues in a new segment (a trial
    that re-reports its earlier values for free) from the point where it stopped. Stops
    once ``search.budget.max_trials`` configurations (not segments) started and none can
    continue, once ``max_cost`` device-seconds were spent, or once a configuration completed
    at or better than ``target``, whichever comes first.

    ``first``: configurations enqueued before any worker asks (an initial design);
    ``sampler(spec_sampler, worker)``: the sampler a worker uses in place of the spec's, for
    benchmark candidates a spec cannot name yet.

    Raises:
        SpecError: The scheduler is PBT, which changes hyperparameters mid-run, or scores with
            a cool-down branch: a recorded curve cannot say what would have happened.
        ValueError: ``first`` with a scheduler (continuations are enqueued trials too).
    """
    if isinstance(search.scheduler, PBTSchedulerSpec):
        raise SpecError(
            "PBT changes hyperparameters mid-run; recorded curves cannot replay it.",
            loc=("search", "scheduler"),
        )
    if first and not isinstance(search.scheduler, NoSchedulerSpec):
        raise ValueError("an initial design and a scheduler's continuations share one queue.")
    if cools_down(search.scheduler):
        raise SpecError(
            "cool-down scores come from branches a recorded curve does not have.",
            loc=("search", "scheduler", "cooldown"),
        )
    search = search.model_copy(
        update={"sampler": search.sampler.model_copy(update={"seed": seed})}
    )
    storage = optuna.storages.InMemoryStorage()
    direction = search.objective.direction
    minimize = direction == "minimize"
    optuna.create_study(storage=storage, study_name=STUDY, direction=direction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        # Worker w samples exactly as a real worker whose seed offset is w would.
        studies = [load_study(STUDY, search, storage, seed_offset=w) for w in range(workers)]
        if sampler is not None:
            for w, study in enumerate(studies):
                study.sampler = sampler(study.sampler, w)
    for params in first:
        studies[0].enqueue_trial(params)
    sim = Simulation()
    curves: dict[int, list[CurvePoint]] = {}  # configuration -> its curve
    records: dict[int, SimTrial] = {}
    in_flight: dict[int, tuple[float, float]] = {}  # worker -> (point start, point cost)
    idle: set[int] = set()
    started = 0
    queue: list[_Event] = []
    best: float | None = None

    def spent(now: float) -> float:
        return sim.total_cost + sum(now - start for start, _ in in_flight.values())

    def ask_for_work(worker: int, now: float) -> None:
        if max_cost is not None and spent(now) >= max_cost:
            return
        # With no scheduler the decision does not depend on the trials: skip reading them.
        plain = isinstance(search.scheduler, NoSchedulerSpec)
        configs = [] if plain else configurations(studies[worker].get_trials(deepcopy=False))
        can_start = started < search.budget.max_trials
        decision = next_work(configs, search.scheduler, can_start=can_start, minimize=minimize)
        if isinstance(decision, Start):
            start_config(worker, now, decision.until)
        elif isinstance(decision, Continue):
            continue_config(worker, now, decision)
        else:
            idle.add(worker)

    def start_config(worker: int, now: float, until: int | None) -> None:
        nonlocal started
        for _ in range(MAX_UNRECORDED_IN_A_ROW):
            trial = studies[worker].ask()
            try:
                curve = objective.curve(suggest_params(trial, search))
                break
            except NotRecorded:
                studies[worker].tell(trial, state=TrialState.FAIL)
        else:
            sim.stalled_workers += 1
            return
        if until is not None:
            trial.set_user_attr(UNTIL_ATTR, until)
        started += 1
        curves[trial.number] = curve
        records[trial.number] = SimTrial(trial.number, worker, trial.params, "running", None,
                                         0.0, now, now)  # fmt: skip
        run_segment(worker, trial, trial.number, 0, until, now)

    def continue_config(worker: int, now: float, decision: Continue) -> None:
        paused = studies[worker].get_trials(deepcopy=False)[decision.trial]
        attrs: dict[str, Any] = {CONTINUES_ATTR: decision.trial}
        if decision.until is not None:
            attrs[UNTIL_ATTR] = decision.until
        studies[worker].enqueue_trial(paused.params, user_attrs=attrs)
        trial = studies[worker].ask()  # pops the continuation: the only trial waiting
        suggest_params(trial, search)
        for step, value in sorted(paused.intermediate_values.items()):
            trial.report(value, step)  # the earlier segments, again: one curve, no cost
        run_segment(worker, trial, decision.config, max(paused.intermediate_values),
                    decision.until, now)  # fmt: skip

    def run_segment(
        worker: int, trial: optuna.Trial, config: int, point: int, until: int | None, now: float
    ) -> None:
        records[config].segments.append(Segment(trial.number, worker, point + 1, point, 0.0,
                                                now, now))  # fmt: skip
        records[config].state = "running"
        schedule(_Event(now, worker, trial, point, until, config))

    def schedule(event: _Event) -> None:
        cost = curves[event.config][event.point][0]
        in_flight[event.worker] = (event.time, cost)
        event.time += cost
        heapq.heappush(queue, event)

    def end_segment(event: _Event, state: str, value: float | None) -> None:
        nonlocal best
        record = records[event.config]
        record.state, record.value, record.end = state, value, event.time
        record.segments[-1].end = event.time
        if state == "paused":
            event.trial.set_user_attr(PAUSED_AT_ATTR, event.until)
        told = TrialState.COMPLETE if state == "complete" else TrialState.PRUNED
        studies[event.worker].tell(event.trial, value, state=told)
        if state == "complete" and value is not None and beats(value, best, minimize=minimize):
            best = value
            sim.best_curve.append((spent(event.time), best))

    for worker in range(workers):
        ask_for_work(worker, 0.0)
    while queue and (target is None or best is None or beats(target, best, minimize=minimize)):
        event = heapq.heappop(queue)
        cost, value = curves[event.config][event.point]
        del in_flight[event.worker]
        sim.total_cost += cost
        segment = records[event.config].segments[-1]
        segment.cost += cost
        segment.last_step = step = event.point + 1
        event.trial.report(value, step=step)
        if step == len(curves[event.config]):
            end_segment(event, "complete", value)
        elif event.trial.should_prune():
            end_segment(event, "pruned", None)
        elif event.until is not None and step >= event.until:
            end_segment(event, "paused", None)
        else:
            event.point += 1
            schedule(event)
            continue
        ask_for_work(event.worker, event.time)
        for worker in sorted(idle):  # what ended may have made a paused configuration promotable
            idle.discard(worker)
            ask_for_work(worker, event.time)
    for record in records.values():
        record.cost = sum(s.cost for s in record.segments)
    sim.trials = sorted(records.values(), key=lambda t: (t.end, t.number))
    return sim
